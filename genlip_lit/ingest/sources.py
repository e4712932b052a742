"""Readers for the corpus layouts `genlip optimize` ingests. They read; they never judge (see `cleaning.py`).

    webdataset  img2dataset's tar output: members `KEY.jpg|png|webp` + `KEY.txt` + `KEY.json` (+ `KEY.cls`)
    folder      img2dataset's files output, or any tree of images with a sidecar `STEM.txt` (and `STEM.json`)
    parquet     files with an image column (raw bytes, or a {bytes, path} struct as datasets libraries export)
                and one or more caption columns
    manifest    a JSONL or CSV/TSV file of image path (relative to the manifest) + caption (+ label)

Work is cut into `Unit`s (one tar shard, one parquet row group, a slice of a file list or manifest): the unit is
what a worker processes, what an interrupted run resumes from, and what fixes the order of the output.
Structural problems (no such input, no caption column, nothing readable) raise `GenLIPUserError` from
`Source.units()`, before any work; problems of single samples travel on as `Record`s for `corpus.py` to count.
Files are opened only through `safe_read.py` (regular files inside the input tree, under `--max-bytes`); files
refused while listing the inputs are kept in `Source.refused` and counted too.
The webdataset and folder readers are here; parquet and manifest readers are in `table_sources.py`; `layouts.py`
detects the layout of the inputs and opens the matching reader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.safe_read import ReadLimits, Refused, check_listed, input_roots, read_file

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
MANIFEST_EXTENSIONS = (".jsonl", ".csv", ".tsv")
TEXT_SIDECAR = "txt"  # caption field name meaning "the KEY.txt sidecar" (webdataset and folder layouts)
FILES_PER_UNIT = 1000  # folder and manifest slices: small enough to resume cheaply, big enough to amortise
PEEK_SAMPLES = 20  # how many leading samples the structural check looks at


@dataclasses.dataclass(frozen=True)
class Record:
    """One sample as read. `image` is None when the source names no image or it could not be read (`error`)."""

    key: str
    image: bytes | None
    caption: Any  # str, bytes or None (None: none of the caption fields is present)
    label: Any = None
    error: str | None = None
    source_bytes: int = 0  # bytes read for this sample (image + text), for the report
    error_reason: str = "missing_image"  # the skip reason when `image` is None ("bad_row": unparsable row, or a
    # refusal of `safe_read`: "not_a_regular_file", "outside_input_root", "too_many_bytes")
    caption_lines: int = 0  # non-blank lines of a caption read from a .txt sidecar (0: not from one);
    # `--caption-lines first` keeps the first of several (unit_writer.clean_record)
    split: str | None = None  # "train"/"val" when the layout says (ImageNet's train/ and val/), else by hash
    caption_optional: bool = False  # a labelled image set (`--labels folders`): no caption stores ""


@dataclasses.dataclass(frozen=True)
class Unit:
    """A resumable piece of work; `describe()` identifies it across runs."""

    path: str
    start: int = 0
    stop: int | None = None
    first: str = ""  # first file of a slice, so a changed file list is noticed on resume

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def expand_braces(pattern: str) -> list[str]:
    """`shards/{00000..00012}.tar` -> 13 paths (zero padding kept); other text passes through."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match is None:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out: list[str] = []
    for i in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[: match.start()] + str(i).zfill(width) + pattern[match.end() :]))
    return out


def resolve_inputs(inputs: Sequence[str]) -> list[str]:
    """Expand braces and globs; every input must exist (a missing one is an error, not a silent skip)."""
    out: list[str] = []
    for raw in inputs:
        for pattern in expand_braces(os.path.expanduser(raw)):
            if any(ch in pattern for ch in "*?["):
                matches = sorted(glob.glob(pattern))
                if not matches:
                    raise GenLIPUserError(f"--input {raw!r}: the pattern {pattern!r} matches nothing")
                out.extend(matches)
            elif not os.path.exists(pattern):
                raise GenLIPUserError(f"--input {raw!r}: {pattern!r} does not exist")
            else:
                out.append(pattern)
    return [os.path.abspath(p) for p in out]


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".")


def _walk(root: str) -> list[str]:
    """Every file under `root`, sorted, hidden files and folders left out."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(found)


def _json_or_none(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class Source(ABC):
    """A corpus in one layout. Subclasses set `format` and implement `units()` and `read()`."""

    format: str = ""

    def __init__(
        self,
        paths: Sequence[str],
        caption_fields: Sequence[str] | None = None,
        label_field: str | None = None,
        image_field: str | None = None,
        limits: ReadLimits = ReadLimits(),  # noqa: B008 - frozen dataclass
    ) -> None:
        self.paths = list(paths)
        self.caption_fields = list(caption_fields) if caption_fields else None
        self.label_field = label_field
        self.image_field = image_field
        self.limits = limits
        self.roots = input_roots(self.paths)
        self.refused: list[tuple[str, str, str]] = []  # (path, reason, detail) of files refused while listing

    @abstractmethod
    def units(self) -> list[Unit]:
        """All work, in output order; raises `GenLIPUserError` on a structural problem."""

    @abstractmethod
    def read(self, unit: Unit) -> Iterator[Record]:
        """The records of one unit, in order."""

    def _files_with(self, extensions: Sequence[str], what: str) -> list[str]:
        """The input files with these extensions that may be opened; the others go to `refused`."""
        files: list[str] = []
        self.refused = []
        for path in self.paths:
            named = not os.path.isdir(path)
            for candidate in [path] if named else _walk(path):
                if _ext(candidate) not in extensions:
                    continue
                try:
                    check_listed(candidate, self.roots, self.limits, named)
                except Refused as refusal:
                    self.refused.append((candidate, refusal.reason, refusal.detail))
                    continue
                except OSError:  # a dangling symlink: reads as missing, like a file deleted meanwhile
                    pass
                files.append(candidate)
        if not files:
            refused = f" ({len(self.refused)} refused, e.g. {self.refused[0][2]})" if self.refused else ""
            raise GenLIPUserError(
                f"no {what} files ({', '.join('.' + e for e in extensions)}) in {list(self.paths)}{refused}"
            )
        return files

    def _read(self, path: str) -> tuple[bytes | None, str | None, str]:
        """(bytes, None, "") or (None, what went wrong, skip reason) for a file a sample names."""
        try:
            return read_file(path, self.roots, self.limits), None, ""
        except Refused as refusal:
            return None, refusal.detail, refusal.reason
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}", "missing_image"

    def _require_captions(self, records: list[Record], where: str) -> None:
        """Structural check on the leading records: a caption field that no sample has is a setup error."""
        if records and all(r.caption is None for r in records):
            fields = self.caption_fields or [TEXT_SIDECAR]
            raise GenLIPUserError(
                f"none of the first {len(records)} samples of {where} has a caption in {fields}: "
                "check --caption-field (for webdataset/folder, 'txt' is the .txt sidecar, other names are keys of "
                "the .json sidecar)"
            )


class _SidecarCaptions:
    """Caption and label lookup for layouts with per-sample sidecar files (`.txt`, `.json`, `.cls`)."""

    caption_fields: list[str] | None
    label_field: str | None

    def _caption(self, parts: dict[str, bytes]) -> Any:
        meta: dict[str, Any] | None = None
        empty: list[Any] = []
        for field in self.caption_fields or [TEXT_SIDECAR]:
            if field == TEXT_SIDECAR:
                value = parts.get(TEXT_SIDECAR)
            else:
                if meta is None:
                    meta = _json_or_none(parts.get("json")) or {}
                value = meta.get(field)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) and not value.strip():
                empty.append(value)  # a fallback list moves on past empty values (an empty .txt too)
                continue
            return value
        # all empty: hand the first one on so the skip reason says "empty" rather than "missing"
        return empty[0] if empty else None

    @staticmethod
    def _sidecar_lines(caption: Any, parts: dict[str, bytes]) -> int:
        """Non-blank lines of `caption` when it is the .txt sidecar (0 otherwise: JSON fields are one caption)."""
        if caption is None or caption is not parts.get(TEXT_SIDECAR):
            return 0
        return sum(1 for line in bytes(caption).splitlines() if line.strip())

    def _label(self, parts: dict[str, bytes]) -> Any:
        field = self.label_field
        if field is None:
            return parts.get("cls")  # webdataset's convention for class ids
        if field == "cls":
            return parts.get("cls")
        return (_json_or_none(parts.get("json")) or {}).get(field)


class WebDatasetSource(_SidecarCaptions, Source):
    """img2dataset / webdataset tar shards: consecutive members sharing a key form one sample."""

    format = "webdataset"

    def units(self) -> list[Unit]:
        shards = self._files_with(("tar",), "tar")
        peek: list[Record] = []
        with contextlib.suppress(ShardReadError):  # a damaged first shard is counted later, not fatal here
            for record in self.read(Unit(shards[0])):
                peek.append(record)
                if len(peek) >= PEEK_SAMPLES:
                    break
        if not peek:
            raise GenLIPUserError(f"the first shard {shards[0]!r} holds no samples (or is not a readable tar file)")
        self._require_captions(peek, f"{shards[0]!r}")
        return [Unit(s) for s in shards]

    @staticmethod
    def _split(name: str) -> tuple[str, str]:
        """webdataset's rule: the key is the path up to the first dot of the base name."""
        directory, base = os.path.split(name)
        stem, _, ext = base.partition(".")
        return os.path.join(directory, stem), ext.lower()

    def _record(self, shard: str, key: str, parts: dict[str, bytes], too_big: str | None = None) -> Record:
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        if self.image_field is not None:
            image_ext = self.image_field if self.image_field in parts else None
        size = sum(len(v) for v in parts.values())
        if too_big is not None:  # a member over --max-bytes was not read: the sample is incomplete
            return Record(key=f"{os.path.basename(shard)}/{key}", image=None, caption=None, error=too_big,
                          error_reason="too_many_bytes", source_bytes=size)
        caption = self._caption(parts)
        return Record(
            key=f"{os.path.basename(shard)}/{key}",
            image=parts.get(image_ext) if image_ext else None,
            caption=caption,
            label=self._label(parts),
            error=None if image_ext else f"no image member among {sorted(parts)}",
            source_bytes=size,
            caption_lines=self._sidecar_lines(caption, parts),
        )

    def read(self, unit: Unit) -> Iterator[Record]:
        key: str | None = None
        parts: dict[str, bytes] = {}
        too_big: str | None = None
        cap = self.limits.max_bytes
        try:
            with tarfile.open(unit.path, mode=_tar_mode(unit.path)) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    member_key, ext = self._split(member.name)
                    if key is not None and member_key != key:
                        yield self._record(unit.path, key, parts, too_big)
                        parts, too_big = {}, None
                    key = member_key
                    if member.size > cap:  # the header's size (a sparse member's full size): judged unread
                        too_big = f"member {member.name} declares {member.size} bytes, over --max-bytes {cap}"
                        continue
                    fh = tar.extractfile(member)
                    parts[ext] = fh.read() if fh is not None else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            # a truncated shard: keep what was read, then report the shard as unreadable from here on
            raise ShardReadError(unit.path, exc) from exc
        if key is not None:
            yield self._record(unit.path, key, parts, too_big)
        if not _ends_like_a_tar(unit.path):
            # cut at a member boundary, tarfile just sees a shorter archive: the missing end marker tells
            raise ShardReadError(unit.path, EOFError("no end-of-archive marker: the file is truncated"))


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz


def _tar_mode(path: str) -> str:
    """`r:` for a plain tar file: tarfile then seeks over the members it skips, so a member declaring 100 GB
    over --max-bytes costs a seek, not a 100 GB read. A compressed shard cannot seek (a seek decompresses up
    to the target anyway): one streaming pass, `r|*`."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError:
        return "r|*"  # the open below names the error
    return "r|*" if head.startswith(_COMPRESSED_MAGIC) else "r:"


def _ends_like_a_tar(path: str) -> bool:
    """Complete tar files end with (at least) two 512-byte blocks of zeros."""
    try:
        size = os.path.getsize(path)
        if size < 1024 or size % 512:
            return False
        with open(path, "rb") as fh:
            fh.seek(size - 1024)
            return fh.read(1024) == bytes(1024)
    except OSError:
        return False


class ShardReadError(Exception):
    """A container (tar shard, parquet file, manifest) stopped being readable part-way through."""

    def __init__(self, path: str, exc: BaseException) -> None:
        super().__init__(f"{path}: {type(exc).__name__}: {exc}")
        self.path = path


class FolderSource(_SidecarCaptions, Source):
    """Image files with sidecars of the same stem (`dir/0001.jpg`, `dir/0001.txt`, `dir/0001.json`)."""

    format = "folder"

    def _images(self) -> list[str]:
        return self._files_with(IMAGE_EXTENSIONS, "image")

    def units(self) -> list[Unit]:
        images = self._images()
        self._files = images
        units = [
            Unit(self.paths[0] if len(self.paths) == 1 else "", i, min(i + FILES_PER_UNIT, len(images)), images[i])
            for i in range(0, len(images), FILES_PER_UNIT)
        ]
        peek = list(self._read_files(images[:PEEK_SAMPLES]))
        self._require_captions(peek, f"{self.paths}")
        return units

    def _read_files(self, files: Sequence[str]) -> Iterator[Record]:
        common = os.path.commonpath(self.paths) if len(self.paths) > 1 else self.paths[0]
        root = common if os.path.isdir(common) else os.path.dirname(common)
        for path in files:
            stem = os.path.splitext(path)[0]
            parts: dict[str, bytes] = {}
            image, error, reason = self._read(path)
            for ext in (TEXT_SIDECAR, "json", "cls"):
                if os.path.lexists(f"{stem}.{ext}"):
                    data, sidecar_error, sidecar_reason = self._read(f"{stem}.{ext}")
                    if data is not None:
                        parts[ext] = data
                    elif sidecar_reason != "missing_image" and error is None:  # refused: the sample goes
                        image, error, reason = None, sidecar_error, sidecar_reason
            key = os.path.relpath(stem, root)
            caption = self._caption(parts)
            yield Record(
                key=key,
                image=image,
                caption=caption,
                caption_lines=self._sidecar_lines(caption, parts),
                label=self._label(parts),
                error=error,
                error_reason=reason or "missing_image",
                source_bytes=len(image or b"") + sum(len(v) for v in parts.values()),
            )

    def read(self, unit: Unit) -> Iterator[Record]:
        files = getattr(self, "_files", None) or self._images()
        self._files = files
        if unit.stop is None or unit.stop > len(files) or files[unit.start] != unit.first:
            raise GenLIPUserError("the image file list changed since the units were planned: start over")
        yield from self._read_files(files[unit.start : unit.stop])


__all__ = [
    "Record",
    "ShardReadError",
    "Source",
    "Unit",
    "expand_braces",
    "resolve_inputs",
]
