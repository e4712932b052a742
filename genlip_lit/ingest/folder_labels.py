"""Class labels from the folder tree (`genlip optimize --labels folders`): ImageFolder and ImageNet layouts.

    genlip optimize --input data/pets --labels folders --output data/pets-shards          # CLASS/*.jpg
    genlip optimize --input imagenet --labels folders --labels-file LOC_val_solution.csv --output data/in1k

Layouts, judged from the input root (the input folder, or the folder above several inputs):

    ROOT/CLASS/.../IMAGE                 the class is the top folder; train/val split by content hash as usual
    ROOT/train/CLASS/.../IMAGE           a `train` folder in ROOT: the split is the folder (train/, val/), the
    ROOT/val/CLASS/.../IMAGE             class the folder below it; other top folders (ImageNet's unlabelled
    ROOT/val/IMAGE                       test/) are not read. A flat val/ (ImageNet's) takes its classes from
                                         `--labels-file`

The labels file maps an image to a class name, one image a line: `NAME CLASS`, `NAME,CLASS` or `NAME<TAB>CLASS`,
NAME a file name with or without its extension, CLASS the first word after it. Kaggle's ImageNet
`LOC_val_solution.csv` (`ImageId,PredictionString`, the synset first) reads as it is; a header line is skipped.
It also labels images that sit directly in ROOT (or in a split folder) outside any class folder.

Class names are the sorted class folder names of the train split (ImageFolder's rule: ids follow sorted names),
plus any class only the labels file names, unless `--classes FILE` fixes the list and its order. They go to
`genlip_meta.json` ("class_names") and to `classes.txt` beside it. An image with no class (outside any class
folder and not in the labels file) is a counted skip (`missing_label`), never a silent drop. Keys are the image's
path relative to ROOT (`train/n01440764/n01440764_10026`), so probe and eval results lead back to the files.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Sequence

from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.sources import FILES_PER_UNIT, FolderSource, Record, Unit

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "val")
HEADER_NAMES = {"imageid", "image", "image_id", "file", "filename", "file_name", "path", "name"}


def read_labels_file(path: str) -> dict[str, str]:
    """Image stem -> class name from a labels file (see the module docstring); mistakes name the file and line."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GenLIPUserError(f"--labels-file {path!r}: {exc}") from exc
    mapping: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if "," in line:
            fields = next(csv.reader([line]))
        elif "\t" in line:
            fields = line.split("\t")
        else:
            fields = line.split(None, 1)
        name = fields[0].strip()
        words = fields[1].split() if len(fields) > 1 else []
        if number == 1 and name.lower() in HEADER_NAMES:
            continue
        if not name or not words:
            raise GenLIPUserError(f"--labels-file {path}:{number}: expected 'IMAGE CLASS', got {line[:80]!r}")
        stem = os.path.splitext(os.path.basename(name))[0]
        if mapping.get(stem, words[0]) != words[0]:
            raise GenLIPUserError(f"--labels-file {path}:{number}: {stem!r} is labelled both {mapping[stem]!r} and "
                                  f"{words[0]!r}")
        mapping[stem] = words[0]
    if not mapping:
        raise GenLIPUserError(f"--labels-file {path!r} labels no image")
    return mapping


class LabelledFolderSource(FolderSource):
    """A folder tree whose folders are the classes (`--labels folders`); captions from sidecars are optional."""

    format = "folder"

    def __init__(self, paths: Sequence[str], labels_file: str | None = None, **kwargs: object) -> None:
        super().__init__(paths, **kwargs)  # type: ignore[arg-type]
        missing = [p for p in self.paths if not os.path.isdir(p)]
        if missing:
            raise GenLIPUserError(f"--labels folders reads folder trees (ROOT/CLASS/IMAGE); {missing[0]!r} is a file")
        common = os.path.commonpath(self.paths)
        self.root = common if len(self.paths) > 1 or os.path.isdir(common) else os.path.dirname(common)
        self.split_layout = os.path.isdir(os.path.join(self.root, "train"))
        self.labels_file = labels_file
        self.file_labels = read_labels_file(labels_file) if labels_file else {}
        self.ignored_folders: list[str] = []

    # ------------------------------------------------------------------------------------ layout
    def _parts(self, path: str) -> list[str]:
        return os.path.relpath(path, self.root).split(os.sep)

    def _images(self) -> list[str]:
        images = super()._images()
        if not self.split_layout:
            return images
        kept = [p for p in images if self._parts(p)[0] in SPLIT_FOLDERS]
        self.ignored_folders = sorted({self._parts(p)[0] for p in images} - set(SPLIT_FOLDERS))
        if self.ignored_folders:
            log.info("%s has a train/ folder: reading train/ and val/ only (not %s)", self.root,
                     ", ".join(f"{name}/" for name in self.ignored_folders))
        if not kept:
            raise GenLIPUserError(f"no images in {self.root}/train or {self.root}/val")
        return kept

    def split_and_class(self, path: str) -> tuple[str | None, str | None]:
        """(the split its folder names or None, its class name or None) for one image file."""
        parts = self._parts(path)
        split = None
        if self.split_layout:
            split, parts = parts[0], parts[1:]
        label = parts[0] if len(parts) > 1 else None
        if label is None:
            label = self.file_labels.get(os.path.splitext(parts[-1])[0])
        return split, label

    def class_names(self) -> tuple[str, ...]:
        """Sorted class folder names of the train split (all images without split folders), plus the classes
        only the labels file names; at least two."""
        names = set()
        for path in self._images():
            split, label = self.split_and_class(path)
            if label is not None and split in (None, "train"):
                names.add(label)
        names |= set(self.file_labels.values())
        if len(names) < 2:
            where = f"{self.root}/train" if self.split_layout else self.root
            raise GenLIPUserError(f"--labels folders: {len(names)} class found in {where} (expected CLASS "
                                  "folders, or --labels-file): a labelled set needs at least 2 classes")
        return tuple(sorted(names))

    # ------------------------------------------------------------------------------------ reading
    def units(self) -> list[Unit]:
        """Slices of the file list, as the folder layout cuts them; no caption check (captions are optional)."""
        images = self._images()
        self._files = images
        units = [Unit(self.paths[0] if len(self.paths) == 1 else "", i, min(i + FILES_PER_UNIT, len(images)),
                      images[i]) for i in range(0, len(images), FILES_PER_UNIT)]
        if self.file_labels:
            stems = {os.path.splitext(os.path.basename(p))[0] for p in images}
            unused = len(set(self.file_labels) - stems)
            if unused:
                log.info("--labels-file %s names %d images that are not among the inputs", self.labels_file, unused)
        return units

    def _read_files(self, files: Sequence[str]) -> Iterator[Record]:
        for path, record in zip(files, super()._read_files(files), strict=True):
            split, label = self.split_and_class(path)
            key = os.path.relpath(os.path.splitext(path)[0], self.root)
            if label is None and record.image is not None:
                record = Record(key=key, image=None, caption=None, source_bytes=record.source_bytes,
                                error="no class: not inside a class folder and not in --labels-file",
                                error_reason="missing_label")
            yield Record(key=key, image=record.image, caption=record.caption, label=label, error=record.error,
                         source_bytes=record.source_bytes, error_reason=record.error_reason, split=split,
                         caption_optional=True)


__all__ = ["LabelledFolderSource", "read_labels_file"]
