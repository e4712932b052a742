"""Tabular corpus readers for `genlip optimize`: parquet files and JSONL / CSV / TSV manifests.

The layouts and the reading contract (`Source.units()` checks structure up front, `read()` yields `Record`s)
are described in `sources.py`; these two readers pick columns by name (with the usual defaults) and fall back
through several caption columns, first non-empty wins.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest import sources as base
from genlip_lit.ingest.safe_read import is_inside
from genlip_lit.ingest.sources import (
    MANIFEST_EXTENSIONS,
    PEEK_SAMPLES,
    Record,
    ShardReadError,
    Source,
    Unit,
)

DEFAULT_IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img", "image_bytes")
DEFAULT_CAPTION_COLUMNS = ("caption", "text", "txt")
DEFAULT_PATH_COLUMNS = ("image", "image_path", "path", "file", "filepath", "filename", "img")
DEFAULT_LABEL_COLUMNS = ("label", "cls")  # used when present and --label-field is not given


def _pick(columns: Sequence[str], wanted: Sequence[str] | None, defaults: Sequence[str], what: str, flag: str,
          where: str) -> list[str]:
    """Choose columns: the requested ones (all must exist) or the first present default."""
    if wanted:
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise GenLIPUserError(f"{where} has no {what} column {missing} (columns: {list(columns)}); check {flag}")
        return list(wanted)
    for name in defaults:
        if name in columns:
            return [name]
    raise GenLIPUserError(
        f"{where} has none of the usual {what} columns {list(defaults)} (columns: {list(columns)}): pass {flag}"
    )


def _label_column(columns: Sequence[str], wanted: str | None, where: str) -> str | None:
    if wanted:
        return _pick(columns, [wanted], (), "label", "--label-field", where)[0]
    return next((c for c in DEFAULT_LABEL_COLUMNS if c in columns), None)


def _first_caption(row: dict[str, Any], fields: Sequence[str]) -> Any:
    """The first non-empty caption among `fields` (a fallback order, e.g. re_caption then org_caption)."""
    for field in fields:
        value = row.get(field)
        if value is None:
            continue
        if isinstance(value, str) and not value.strip():
            continue
        return value
    # all empty: hand the first one on so the skip reason says "empty" rather than "missing"
    return next((row.get(f) for f in fields if row.get(f) is not None), None)


class ParquetSource(Source):
    """Parquet files, one unit per row group."""

    format = "parquet"

    def _columns(self, path: str) -> tuple[str, list[str], str | None]:
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as exc:
            raise GenLIPUserError(f"cannot read parquet file {path!r}: {type(exc).__name__}: {exc}") from exc
        names = list(schema.names)
        if self.image_field:
            image = _pick(names, [self.image_field], (), "image", "--image-field", path)[0]
        else:
            image_defaults = [n for n in DEFAULT_IMAGE_COLUMNS if n in names]
            binary = [f.name for f in schema if _is_image_type(f.type)]
            choice = image_defaults[:1] or binary[:1]
            if not choice:
                raise GenLIPUserError(
                    f"{path!r} has no image column (binary, or a struct with 'bytes'); columns: {names}; "
                    "pass --image-field"
                )
            image = choice[0]
        image_type = schema.field(image).type
        if not _is_image_type(image_type):  # strings or numbers would fail on every row: say so once, up front
            raise GenLIPUserError(
                f"{path!r}: column {image!r} holds {image_type}, not image bytes (binary, or a struct with a binary "
                "'bytes' field); pass --image-field with the image column"
            )
        captions = _pick(names, self.caption_fields, DEFAULT_CAPTION_COLUMNS, "caption", "--caption-field", path)
        return image, captions, _label_column(names, self.label_field, path)

    def units(self) -> list[Unit]:
        import pyarrow.parquet as pq

        files = self._files_with(("parquet",), "parquet")
        units: list[Unit] = []
        for path in files:  # every file's schema is checked before any work starts
            self._columns(path)
            num_groups = pq.ParquetFile(path).num_row_groups
            units.extend(Unit(path, g, g + 1) for g in range(num_groups))
        return units

    def read(self, unit: Unit) -> Iterator[Record]:
        import pyarrow.parquet as pq

        image_col, caption_cols, label_col = self._columns(unit.path)
        columns = [image_col, *caption_cols] + ([label_col] if label_col else [])
        has_key = "key" in pq.read_schema(unit.path).names
        columns += ["key"] if has_key and "key" not in columns else []
        try:
            pf = pq.ParquetFile(unit.path)
            offset = sum(pf.metadata.row_group(g).num_rows for g in range(unit.start))
            rows = pf.read_row_group(unit.start, columns=columns).to_pylist()
        except Exception as exc:
            raise ShardReadError(unit.path, exc) from exc
        stem = os.path.splitext(os.path.basename(unit.path))[0]
        cap = self.limits.max_bytes
        for i, row in enumerate(rows):
            value = row.get(image_col)
            image, error, reason = value, None, "missing_image"
            if isinstance(value, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
                image = value.get("bytes")
                if image is None and value.get("path"):
                    path = os.path.expanduser(str(value["path"]))
                    if not os.path.isabs(path):
                        path = os.path.join(os.path.dirname(unit.path), path)
                    image, error, reason = self._read(path)
            if image is None and error is None:
                error = f"column {image_col!r} is empty"
            elif image is not None and len(image) > cap:
                image, error, reason = None, f"{len(image)} bytes in column {image_col!r}, over --max-bytes {cap}", \
                    "too_many_bytes"
            caption = _first_caption(row, caption_cols)
            key = str(row["key"]) if has_key and row.get("key") is not None else f"{stem}/{offset + i}"
            yield Record(
                key=key,
                image=bytes(image) if image is not None else None,
                caption=caption,
                label=row.get(label_col) if label_col else None,
                error=error,
                error_reason=reason or "missing_image",
                source_bytes=len(image or b"") + len(str(caption or "")),
            )


def _is_image_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return True
    if not pa.types.is_struct(arrow_type):
        return False
    fields = {arrow_type.field(i).name: arrow_type.field(i).type for i in range(arrow_type.num_fields)}
    return "bytes" in fields and (pa.types.is_binary(fields["bytes"]) or pa.types.is_large_binary(fields["bytes"])
                                  or pa.types.is_null(fields["bytes"]))


class ManifestSource(Source):
    """JSONL or CSV/TSV rows of image path + caption (+ label); relative paths are relative to the manifest."""

    format = "manifest"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def _load(self, path: str) -> list[dict[str, Any]]:
        if path in self._rows:
            return self._rows[path]
        rows: list[dict[str, Any]] = []
        try:
            if path.lower().endswith(".jsonl"):
                with open(path, encoding="utf-8-sig") as fh:  # -sig: tolerate a byte-order mark
                    for line_no, line in enumerate(fh, start=1):
                        if not line.strip():
                            continue
                        try:
                            row = json.loads(line)
                        except ValueError:
                            row = {"__error__": f"line {line_no} is not valid JSON"}
                        if not isinstance(row, dict):
                            row = {"__error__": f"line {line_no} is not a JSON object"}
                        row.setdefault("__line__", line_no)
                        rows.append(row)
            else:
                with open(path, encoding="utf-8-sig", newline="") as fh:  # spreadsheets often write a BOM
                    dialect = "excel-tab" if path.lower().endswith(".tsv") else "excel"
                    # fields beyond the header go under a "__" key, which is never taken for a column
                    reader = csv.DictReader(fh, dialect=dialect, restkey="__extra__")
                    for line_no, row in enumerate(reader, start=2):
                        extra = row.pop("__extra__", None)
                        if extra:  # the caption (or path) was probably cut at an unquoted delimiter
                            row = {"__error__": f"line {line_no} has {len(extra)} field(s) more than the header"}
                        rows.append({**row, "__line__": line_no})
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise GenLIPUserError(f"cannot read manifest {path!r}: {type(exc).__name__}: {exc}") from exc
        self._rows[path] = rows
        return rows

    def _fields(self, path: str, rows: list[dict[str, Any]]) -> tuple[str, list[str], str | None]:
        columns: list[str] = []
        for row in rows[:PEEK_SAMPLES]:  # JSONL rows may differ; the leading ones show the structure
            columns.extend(k for k in row if k not in columns and not k.startswith("__"))
        image = _pick(columns, [self.image_field] if self.image_field else None, DEFAULT_PATH_COLUMNS, "image path",
                      "--image-field", path)[0]
        captions = _pick(columns, self.caption_fields, DEFAULT_CAPTION_COLUMNS, "caption", "--caption-field", path)
        return image, captions, _label_column(columns, self.label_field, path)

    def units(self) -> list[Unit]:
        files = self._files_with([e.lstrip(".") for e in MANIFEST_EXTENSIONS], "manifest")
        units: list[Unit] = []
        for path in files:
            rows = self._load(path)
            if not rows:
                raise GenLIPUserError(f"manifest {path!r} has no rows")
            image_field = self._fields(path, rows)[0]
            self._require_inside(path, [r.get(image_field) for r in rows[:PEEK_SAMPLES]])
            units.extend(Unit(path, i, min(i + base.FILES_PER_UNIT, len(rows))) for i in range(0, len(rows), base.FILES_PER_UNIT))
        return units

    def _require_inside(self, manifest: str, refs: list[Any]) -> None:
        """Structural check: a manifest whose leading image paths all leave the input tree (absolute paths into
        another disk, say) would skip every row; say so before any work."""
        paths = [self._image_path(manifest, ref) for ref in refs if ref is not None and str(ref).strip()]
        if self.limits.allow_outside or not paths or any(is_inside(p, self.roots) for p in paths):
            return
        raise GenLIPUserError(
            f"manifest {manifest!r}: its image paths lead outside the input tree {list(self.roots)} (e.g. "
            f"{paths[0]!r}); pass --allow-outside to read them"
        )

    @staticmethod
    def _image_path(manifest: str, ref: Any) -> str:
        path = os.path.expanduser(str(ref))
        return path if os.path.isabs(path) else os.path.join(os.path.dirname(manifest), path)

    def read(self, unit: Unit) -> Iterator[Record]:
        rows = self._load(unit.path)
        image_field, caption_fields, label_field = self._fields(unit.path, rows)
        stem = os.path.splitext(os.path.basename(unit.path))[0]
        for row in rows[unit.start : unit.stop]:
            ref = row.get(image_field)
            # the image path as the manifest writes it leads back to the file; the line tells repeats apart
            key = f"{stem}/{row['__line__']}" + (f":{str(ref).strip()}" if ref is not None and str(ref).strip() else "")
            image, error = None, row.get("__error__")
            reason = "bad_row" if error else "missing_image"
            if error is None and (ref is None or not str(ref).strip()):
                error = f"no {image_field!r} value"
            elif error is None:
                image, error, reason = self._read(self._image_path(unit.path, ref))
            caption = _first_caption(row, caption_fields)
            yield Record(
                key=key,
                image=image,
                caption=caption,
                label=row.get(label_field) if label_field else None,
                error=error,
                error_reason=reason or "missing_image",
                source_bytes=len(image or b"") + len(str(caption or "")),
            )
