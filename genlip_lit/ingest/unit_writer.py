"""One unit of `genlip optimize --input` work: read its records, clean each one, write the kept samples as the
unit's own litdata chunks, and leave a done-marker with the unit's counts.

Every failure of one sample is a counted skip with a reason (`cleaning.SKIP_REASONS`), whatever raised it, so
no sample can stop a run. A sample that kills the process outright (a decoder crash, the out-of-memory killer)
is caught on the next run instead: the unit notes the position of the sample it is working on in
`.genlip_work/unit-N.at`, and `--resume` re-checks that one sample in a throwaway child process first; if the
child dies too, the sample is skipped as `crashed_decoder`, otherwise it is processed as usual (so a kill from
outside changes nothing in the output).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import hashlib
import io
import os
import time
from collections.abc import Iterator
from typing import Any

from PIL import Image

from genlip_lit.data.shards import SPLITS, WORK_DIR
from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.cleaning import (
    DEFAULT_MAX_CAPTION_CHARS,
    ImagePolicy,
    Skip,
    cap_caption,
    clean_caption,
    clean_image,
    clean_label,
)
from genlip_lit.ingest.sources import Record, ShardReadError, Source, Unit
from genlip_lit.storage.paths import write_json

CAPTION_LINES = ("first", "all")  # `--caption-lines`: what a .txt sidecar of several lines contributes
EXAMPLES_PER_REASON = 5  # skipped sample keys kept per reason in the report, to find the culprits


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    """Everything that decides what the shards hold (recorded in the plan; a resume must not change it)."""

    policy: ImagePolicy = ImagePolicy()
    val_fraction: float = 0.01
    class_names: tuple[str, ...] | None = None
    chunk_bytes: str = "64MB"
    max_caption_chars: int | None = DEFAULT_MAX_CAPTION_CHARS  # longer captions are cut (and counted)
    caption_lines: str = "first"  # a .txt sidecar of several lines: its first line ("first") or all, joined

    def __post_init__(self) -> None:
        if self.caption_lines not in CAPTION_LINES:
            raise GenLIPUserError(f"--caption-lines must be one of {list(CAPTION_LINES)}, got {self.caption_lines!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise GenLIPUserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_caption_chars is not None and self.max_caption_chars < 1:
            raise GenLIPUserError(f"--max-caption-chars must be positive, got {self.max_caption_chars}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d


def split_of(image: bytes, val_fraction: float) -> str:
    """'val' for a `val_fraction` share of images, chosen by content hash."""
    if val_fraction <= 0:
        return "train"
    u = int.from_bytes(hashlib.sha1(image).digest()[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "train"


@dataclasses.dataclass
class UnitStats:
    kept: dict[str, int] = dataclasses.field(default_factory=lambda: {s: 0 for s in SPLITS})
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    captions_cut: int = 0
    multiline_sidecars: int = 0  # kept samples whose .txt sidecar has several non-blank lines
    most_sidecar_lines: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def skip(self, reason: str, key: str, detail: str) -> None:
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(f"{key}: {detail}" if detail else key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": dict(self.kept),
            "skipped": dict(self.skipped),
            "examples": self.examples,
            "captions_cut": self.captions_cut,
            "multiline_sidecars": self.multiline_sidecars,
            "most_sidecar_lines": self.most_sidecar_lines,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
        }


class _SplitWriter:
    """litdata `BinaryWriter` for one (unit, split), created on first use; chunk names carry the unit id."""

    def __init__(self, out_dir: str, split: str, unit_id: int, chunk_bytes: str) -> None:
        self.dir = os.path.join(out_dir, split)
        self.unit_id = unit_id
        self.chunk_bytes = chunk_bytes
        self.writer: Any = None
        self.count = 0
        for stale in glob.glob(os.path.join(self.dir, f"chunk-{unit_id}-*.bin")):  # from an interrupted try
            os.remove(stale)

    def add(self, sample: dict[str, Any]) -> None:
        if self.writer is None:
            from litdata.streaming.writer import BinaryWriter

            os.makedirs(self.dir, exist_ok=True)
            self.writer = BinaryWriter(self.dir, chunk_bytes=self.chunk_bytes)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the inferred data format once per rank
            self.writer.add_item(self.count, sample)
        self.count += 1

    def finish(self, work_dir: str) -> None:
        """Write the last chunk and park this unit's index in the work dir until the merge."""
        if self.writer is None:
            return
        self.writer.done()
        os.replace(
            os.path.join(self.dir, f"{self.unit_id}.index.json"),
            os.path.join(work_dir, f"{os.path.basename(self.dir)}-{self.unit_id}.index.json"),
        )


def storable_key(key: str) -> str:
    """Keys come from file names, which on Linux may be any bytes (decoded with surrogate escapes): the shard
    writer stores UTF-8, so such bytes are spelled out (`\\udcff`) instead of stopping the writer."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def clean_record(record: Record, options: IngestOptions, class_ids: dict[str, int] | None
                 ) -> tuple[dict[str, Any], bool]:
    """The sample to store and whether its caption was cut; raises `Skip` for a bad sample."""
    if record.image is None:
        raise Skip(record.error_reason, record.error or "")
    if record.caption is None and record.caption_optional:  # a labelled image set: the caption is not needed
        caption, cut = "", False
    else:
        first = options.caption_lines == "first" and record.caption_lines > 1
        caption, cut = cap_caption(clean_caption(record.caption, first_line=first), options.max_caption_chars)
    label = clean_label(record.label, class_ids)
    image, _, _ = clean_image(record.image, options.policy)
    return {"image": image, "caption": caption, "key": storable_key(record.key), "label": label}, cut


def crashes_in_child(record: Record, options: IngestOptions, class_ids: dict[str, int] | None) -> str | None:
    """Clean `record` in a forked child: how the child died, or None when it lived (or fork does not exist)."""
    if not hasattr(os, "fork"):
        return None
    pid = os.fork()
    if pid == 0:  # the child: any outcome but a crash exits 0
        try:
            clean_record(record, options, class_ids)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    code = os.waitstatus_to_exitcode(status)
    return None if code == 0 else f"exit code {code}"


class _Journal:
    """The position of the record a unit is working on, on disk, so the next run knows where this one died."""

    WIDTH = 20

    def __init__(self, work_dir: str, unit_id: int) -> None:
        self.path = os.path.join(work_dir, f"unit-{unit_id}.at")
        self.previous: int | None = None
        with contextlib.suppress(OSError, ValueError):
            with open(self.path, "rb") as fh:
                self.previous = int(fh.read(self.WIDTH))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)

    def mark(self, position: int) -> None:
        os.pwrite(self.fd, b"%*d" % (self.WIDTH, position), 0)  # no fsync: it must outlive the process only

    def close(self, remove: bool) -> None:
        os.close(self.fd)
        if remove:
            with contextlib.suppress(OSError):
                os.remove(self.path)


@contextlib.contextmanager
def _writer_rank(unit_id: int) -> Iterator[None]:
    """litdata's BinaryWriter names chunks and its index after its rank, read from this variable; one rank per
    unit keeps the names of all units apart. Restored afterwards so nothing else in the process sees it.
    PIL's own pixel limit is lifted meanwhile: `ImagePolicy.max_pixels` is the limit, judged from the header."""
    before, pixels = os.environ.get("DATA_OPTIMIZER_GLOBAL_RANK"), Image.MAX_IMAGE_PIXELS
    os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = str(unit_id)
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = pixels
        if before is None:
            os.environ.pop("DATA_OPTIMIZER_GLOBAL_RANK", None)
        else:
            os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = before


def process_unit(source: Source, unit: Unit, unit_id: int, out_dir: str, options: IngestOptions) -> dict[str, Any]:
    """Clean and write one unit; returns its stats (also stored as the unit's done-marker)."""
    with _writer_rank(unit_id):
        return _process_unit(source, unit, unit_id, out_dir, options)


def _process_unit(source: Source, unit: Unit, unit_id: int, out_dir: str, options: IngestOptions) -> dict[str, Any]:
    start = time.perf_counter()
    work_dir = os.path.join(out_dir, WORK_DIR)
    stats = UnitStats()
    writers = {s: _SplitWriter(out_dir, s, unit_id, options.chunk_bytes) for s in SPLITS}
    class_ids = None if options.class_names is None else {name: i for i, name in enumerate(options.class_names)}
    journal = _Journal(work_dir, unit_id)
    try:
        _write_records(source, unit, options, class_ids, writers, stats, journal)
    except BaseException:
        journal.close(remove=False)  # the position stays for the next run to look at
        raise
    for writer in writers.values():
        writer.finish(work_dir)
    stats.seconds = time.perf_counter() - start
    result = {"unit": unit.describe(), **stats.to_dict()}
    write_json(os.path.join(work_dir, f"unit-{unit_id}.json"), result)  # last: marks the unit done
    journal.close(remove=True)
    return result


def _write_records(source: Source, unit: Unit, options: IngestOptions, class_ids: dict[str, int] | None,
                   writers: dict[str, _SplitWriter], stats: UnitStats, journal: _Journal) -> None:
    records: Iterator[Record] = source.read(unit)
    position = -1
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except ShardReadError as exc:
            stats.skip("unreadable_shard", os.path.basename(exc.path), str(exc))
            break
        position += 1
        journal.mark(position)
        stats.bytes_in += record.source_bytes
        try:
            if position == journal.previous and record.image is not None:
                crash = crashes_in_child(record, options, class_ids)
                if crash is not None:
                    raise Skip("crashed_decoder", f"the run before stopped on this sample; re-checked, it {crash}")
            sample, cut = clean_record(record, options, class_ids)
        except Skip as skip:
            stats.skip(skip.reason, record.key, skip.detail)
            continue
        except Exception as exc:  # whatever else one sample raises, it is that sample's problem
            stats.skip("unexpected_error", record.key, f"{type(exc).__name__}: {exc}")
            continue
        split = record.split or split_of(sample["image"], options.val_fraction)  # the layout's split wins
        writers[split].add(sample)
        stats.kept[split] += 1
        stats.captions_cut += cut
        if record.caption_lines > 1:
            stats.multiline_sidecars += 1
            stats.most_sidecar_lines = max(stats.most_sidecar_lines, record.caption_lines)
        stats.bytes_out += len(sample["image"])
