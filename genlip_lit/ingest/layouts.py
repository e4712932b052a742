"""Which layout the inputs of `genlip optimize` are in, and the reader for it (`open_source`).

Sits above the readers (`sources.py` for webdataset and folder, `table_sources.py` for parquet and manifest), so
that neither reader module needs to know the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.safe_read import ReadLimits
from genlip_lit.ingest.sources import (
    IMAGE_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    FolderSource,
    Source,
    WebDatasetSource,
    _ext,
    _walk,
    resolve_inputs,
)
from genlip_lit.ingest.table_sources import ManifestSource, ParquetSource

FORMATS = ("webdataset", "folder", "parquet", "manifest")


def detect_format(paths: Sequence[str]) -> str:
    """The layout of resolved inputs; all inputs must share one."""
    kinds = set()
    for path in paths:
        files = _walk(path) if os.path.isdir(path) else [path]
        exts = {_ext(f) for f in files}
        if "tar" in exts:
            kinds.add("webdataset")
        elif "parquet" in exts:
            kinds.add("parquet")
        elif exts & {e.lstrip(".") for e in MANIFEST_EXTENSIONS}:
            kinds.add("manifest")
        elif exts & set(IMAGE_EXTENSIONS):
            kinds.add("folder")
        else:
            raise GenLIPUserError(
                f"cannot tell the layout of {path!r}: no .tar, .parquet, .jsonl/.csv/.tsv or image files in it; "
                "pass --format"
            )
    if len(kinds) > 1:
        raise GenLIPUserError(f"the inputs mix layouts {sorted(kinds)}: run `genlip optimize` once per layout")
    return kinds.pop()


def source_classes() -> dict[str, type[Source]]:
    """Layout name -> reader."""
    return {"webdataset": WebDatasetSource, "folder": FolderSource, "parquet": ParquetSource,
            "manifest": ManifestSource}


def open_source(
    inputs: Sequence[str],
    fmt: str = "auto",
    caption_fields: Sequence[str] | None = None,
    label_field: str | None = None,
    image_field: str | None = None,
    limits: ReadLimits = ReadLimits(),  # noqa: B008 - frozen dataclass
    labels: str | None = None,
    labels_file: str | None = None,
) -> Source:
    """Resolve `inputs` and build the reader for their layout (`fmt="auto"` detects it); it reads only what
    `limits` allows (see `safe_read.py`). `labels="folders"`: classes from the folder tree (`folder_labels.py`)."""
    paths = resolve_inputs(inputs)
    if labels_file is not None and labels != "folders":
        raise GenLIPUserError("--labels-file goes with --labels folders (class folders, e.g. ImageNet's flat val/)")
    if labels == "folders":
        from genlip_lit.ingest.folder_labels import LabelledFolderSource

        if fmt not in ("auto", "folder"):
            raise GenLIPUserError(f"--labels folders reads a folder tree of images, not --format {fmt}")
        if label_field is not None:
            raise GenLIPUserError("--labels folders and --label-field are two sources of labels: give one")
        return LabelledFolderSource(paths, labels_file=labels_file, caption_fields=caption_fields,
                                    image_field=image_field, limits=limits)
    if labels not in (None, "field"):
        raise GenLIPUserError(f"--labels {labels!r}: choose folders, or field (--label-field, the default)")
    if fmt == "auto":
        fmt = detect_format(paths)
    classes = source_classes()
    if fmt not in classes:
        raise GenLIPUserError(f"--format {fmt!r}: choose one of auto, {', '.join(FORMATS)}")
    return classes[fmt](paths, caption_fields=caption_fields, label_field=label_field, image_field=image_field,
                        limits=limits)


__all__ = ["FORMATS", "detect_format", "open_source", "source_classes"]
