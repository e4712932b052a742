"""Labelled image sets for the frozen-feature probes: an ImageNet-style folder tree, or labelled litdata shards.

    data = ImageFolderSet("data/imagenette")            # root/CLASS/*.jpg, or root/train/CLASS + root/val/CLASS
    tf = FixedResTransform(224)
    results = run_probes(module, data.batches(tf, 64, "train"), data.batches(tf, 64, "val"), data.num_classes)

    val = ShardLabelledSet("data/cc", "val")             # written by `genlip optimize` with --label-field

Both yield (pixel_values float [B, 3, S, S] normalized, labels long [B]) batches, the input of
`genlip_lit.eval.probes`. Reading never crashes on a bad sample: an image that does not decode (and, in
shards, a sample labelled -1 = unlabelled) is skipped and counted. Problems with the layout itself (missing
root, no class folders, an empty class, a single class) are `GenLIPUserError`s that name what is wrong.

Samples come out in a fixed, seeded shuffle rather than in class order, so a probe `budget` that reads only
the first K samples still sees every class in proportion. `reading_order` is that rule, and the one every
evaluation view follows (`eval/data.py`: a run's own shards too), so `genlip probe`, `genlip eval` and the
end-of-fit probe read the same samples of the same data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from genlip_lit.data.shard_check import check_split, read_sample
from genlip_lit.data.transforms import FixedResTransform, decode_image
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.probes import stratified_split

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # matched case-insensitively (ImageNet: .JPEG)
SPLITS = ("train", "val")
META_FILE = "genlip_meta.json"  # same name as genlip_lit.data.shards.META_FILE


def _read_image(path: str) -> Any:
    """Decode a file into a PIL image; any read or decode problem becomes ValueError (the skip signal)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    return decode_image(data)


def _batched(
    samples: Iterable[tuple[torch.Tensor, int]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Group (pixels [3, S, S], label) pairs into (pixels [B, 3, S, S], labels [B]); the last batch may be short."""
    pixels: list[torch.Tensor] = []
    labels: list[int] = []
    for image, label in samples:
        pixels.append(image)
        labels.append(label)
        if len(pixels) == batch_size:
            yield torch.stack(pixels), torch.tensor(labels, dtype=torch.long)
            pixels, labels = [], []
    if pixels:
        yield torch.stack(pixels), torch.tensor(labels, dtype=torch.long)


def _check_batch_size(batch_size: int) -> None:
    # checked when batches() is called, not when the generator first runs
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


READ_SEED = 0  # the shuffle of every labelled split and every run's held-out split (probe --seed: ImageFolders')


def reading_order(n: int, seed: int = READ_SEED) -> np.ndarray:
    """The order in which evaluations read a split of `n` samples: a seeded permutation, so the first K (a budget)
    are a random draw whatever order the data was stored in (`genlip optimize --labels folders` stores class by
    class); the same for every command, so one checkpoint on one data set gives one probe figure."""
    return np.random.default_rng(seed).permutation(n)


def describe_order(seed: int = READ_SEED) -> str:
    """How `reading_order` picks a budget's samples, for the settings line under probe tables."""
    return f"a seeded shuffle (seed {seed})"


# ---------------------------------------------------------------------------------------------- image folders
def _class_dirs(root: str) -> list[str]:
    """Sorted sub-directory names of `root`; hidden ones (.git, .ipynb_checkpoints) are not classes."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _scan_class(folder: str) -> tuple[list[str], int]:
    """(image paths under `folder`, recursively and sorted; count of other files, which are ignored)."""
    images, other = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(os.path.join(dirpath, name))
            else:
                other += 1
    return images, other


class ImageFolderSet:
    """An ImageNet-style tree: `root/CLASS_NAME/*.{png,jpg,jpeg,webp,bmp}`; class ids follow sorted names.

    With `root/train/CLASS/...` and `root/val/CLASS/...`, those are the splits (val's classes must be train's).
    Otherwise (or with only `root/train/`) a seeded stratified split holds out `test_fraction` of every class
    as "val". Files with other extensions are ignored and counted in `num_ignored`; images that fail to decode
    are skipped when read and counted in `num_corrupt` (each file once, however often it is read).
    """

    def __init__(self, root: str, test_fraction: float = 0.2, seed: int = 0) -> None:
        root = os.path.abspath(os.path.expanduser(str(root)))
        if not os.path.isdir(root):
            raise GenLIPUserError(f"image folder {root!r} does not exist (expected root/CLASS_NAME/*.jpg)")
        self.root, self.seed = root, seed
        self.num_ignored = 0
        self.corrupt: set[str] = set()
        train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
        if os.path.isdir(train_dir):
            self.class_names = self._classes(train_dir)
            train = self._scan(train_dir)
            if os.path.isdir(val_dir):
                self._samples = {"train": train, "val": self._scan(val_dir, known=True)}
                self.layout = "train/val folders"
            else:
                self._samples = self._split(train, test_fraction, seed)
                self.layout = f"train folder, stratified split (val {test_fraction:g}, seed {seed})"
        else:
            self.class_names = self._classes(root)
            self._samples = self._split(self._scan(root), test_fraction, seed)
            self.layout = f"class folders, stratified split (val {test_fraction:g}, seed {seed})"
        self.class_to_idx = {name: i for i, name in enumerate(self.class_names)}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(v)}" for s, v in self._samples.items())
        return f"{type(self).__name__}({self.root!r}, classes={self.num_classes}, {sizes}, {self.layout})"

    @staticmethod
    def _classes(folder: str) -> list[str]:
        names = _class_dirs(folder)
        if not names:
            raise GenLIPUserError(f"no class folders in {folder!r}: expected {folder}/CLASS_NAME/*.jpg")
        if len(names) < 2:
            raise GenLIPUserError(f"only one class folder ({names[0]!r}) in {folder!r}: a probe needs at least 2 classes")
        return names

    def _scan(self, folder: str, known: bool = False) -> list[tuple[str, int]]:
        """(path, class id) for every image file; `known`: class folders must be a subset of the train classes."""
        names = _class_dirs(folder)
        if known:
            extra = sorted(set(names) - set(self.class_names))
            if extra:
                raise GenLIPUserError(f"{folder!r} has class folders that train/ lacks: {extra}")
        else:
            names = self.class_names
        samples = []
        for name in names:
            images, other = _scan_class(os.path.join(folder, name))
            self.num_ignored += other
            if not images:
                raise GenLIPUserError(
                    f"class folder {os.path.join(folder, name)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
            label = self.class_names.index(name)
            samples += [(p, label) for p in images]
        return samples

    @staticmethod
    def _split(samples: list[tuple[str, int]], fraction: float, seed: int) -> dict[str, list[tuple[str, int]]]:
        if not 0.0 < fraction < 1.0:
            raise GenLIPUserError(f"test_fraction must be between 0 and 1, got {fraction}")
        keep, held = stratified_split([label for _, label in samples], fraction, seed)
        return {"train": [samples[i] for i in keep], "val": [samples[i] for i in held]}

    # -------------------------------------------------------------------------------------- queries
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_corrupt(self) -> int:
        """Image files that failed to decode so far (known only once read)."""
        return len(self.corrupt)

    def _check_split(self, split: str) -> str:
        if split == "test":  # the probes' word for it
            split = "val"
        if split not in self._samples:
            raise GenLIPUserError(f"unknown split {split!r}: choose one of {list(self._samples)}")
        return split

    def samples(self, split: str = "train") -> list[tuple[str, int]]:
        """(path, class id) pairs of a split, in reading order (a fixed seeded shuffle)."""
        items = self._samples[self._check_split(split)]
        return [items[i] for i in reading_order(len(items), self.seed)]

    def num_samples(self, split: str = "train") -> int:
        """Image files in a split (corrupt ones included until read)."""
        return len(self._samples[self._check_split(split)])

    def batches(
        self, transform: FixedResTransform, batch_size: int, split: str = "train"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(pixel_values float [B, 3, S, S], labels long [B]); undecodable images are skipped and counted."""
        _check_batch_size(batch_size)
        return _batched(self._decoded(self.samples(split), transform), batch_size)

    def _decoded(
        self, samples: list[tuple[str, int]], transform: FixedResTransform
    ) -> Iterator[tuple[torch.Tensor, int]]:
        for path, label in samples:
            try:
                image = _read_image(path)
            except ValueError as exc:
                if path not in self.corrupt:
                    log.warning("skipping %s", exc)
                self.corrupt.add(path)
                continue
            yield transform(image), label


# ---------------------------------------------------------------------------------------------- litdata shards
def read_meta(data_dir: str) -> dict[str, Any]:
    """The `genlip_meta.json` of a shard directory, local or in object storage ({} when there is none)."""
    from genlip_lit.storage import paths as storage

    path = storage.join(data_dir, META_FILE)
    if not storage.isfile(path):
        return {}
    try:
        meta = storage.read_json(path)
    except OSError as exc:
        raise GenLIPUserError(f"cannot read {path!r}: {exc}") from exc
    return meta if isinstance(meta, dict) else {}


class ShardLabelledSet:
    """One split (`train`/`val`) of labelled litdata shards written by `genlip optimize`.

    Samples need "image" (encoded bytes) and "label" (int; -1 = unlabelled, skipped and counted in
    `num_unlabelled`). Class names come from `genlip_meta.json` ("class_names") when the dataset records them;
    otherwise they are the label ids as strings and the class count is the largest label + 1 (one pass over
    the split, done only when asked). Reading is by index (`ds[i]`) in a seeded shuffle; pass `shuffle=False`
    to `batches` for sequential chunk reads (cheaper for remote data streamed through a cache).
    """

    def __init__(self, data_dir: str, split: str = "val", seed: int = READ_SEED) -> None:
        from genlip_lit.storage import paths as storage  # deferred: only shard users pay for litdata

        if storage.is_remote(data_dir):  # s3://...: streamed through litdata's cache
            data_dir = str(data_dir).rstrip("/")
        else:
            data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
            if not os.path.isdir(data_dir):
                raise GenLIPUserError(f"shard directory {data_dir!r} does not exist (write it with `genlip optimize`)")
        split_dir = storage.join(data_dir, split)
        if not storage.isfile(storage.join(split_dir, "index.json")):
            found = [s for s in SPLITS if storage.isfile(storage.join(data_dir, s, "index.json"))]
            raise GenLIPUserError(f"no litdata split {split!r} in {data_dir!r} (splits found: {found or 'none'})")
        self.data_dir, self.split, self.seed = data_dir, split, seed
        check_split(split_dir)  # a damaged local index or chunk: one line naming the file
        self.dataset = storage.streaming_dataset(split_dir)
        names = read_meta(data_dir).get("class_names")
        self._class_names: list[str] | None = [str(n) for n in names] if names else None
        self._max_label: int | None = None
        self.unlabelled: set[int] = set()
        self.corrupt: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data_dir!r}, split={self.split!r}, samples={len(self)})"

    @property
    def num_unlabelled(self) -> int:
        return len(self.unlabelled)

    @property
    def num_corrupt(self) -> int:
        return len(self.corrupt)

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            return [str(i) for i in range(self.num_classes)]
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        if self._class_names is not None:
            return len(self._class_names)
        if self._max_label is None:
            split_dir = os.path.join(self.data_dir, self.split)
            labels = [self._label(read_sample(self.dataset, i, split_dir), i) for i in range(len(self))]
            self._max_label = max(labels, default=-1)
        if self._max_label < 0:
            raise GenLIPUserError(f"no labelled samples in {self.data_dir}/{self.split} (every label is -1)")
        return self._max_label + 1

    def _label(self, raw: dict[str, Any], index: int) -> int:
        if "image" not in raw or "label" not in raw:
            raise GenLIPUserError(
                f"samples in {self.data_dir}/{self.split} need 'image' and 'label' fields (found {sorted(raw)}); "
                "write them with `genlip optimize --label-field ...`"
            )
        label = int(raw["label"])
        if self._class_names is not None and label >= len(self._class_names):
            raise GenLIPUserError(
                f"sample {index} of {self.data_dir}/{self.split} has label {label}, but {META_FILE} lists "
                f"{len(self._class_names)} classes"
            )
        return label

    def _order(self, shuffle: bool) -> Sequence[int]:
        return reading_order(len(self), self.seed) if shuffle else range(len(self))

    def batches(
        self, transform: FixedResTransform, batch_size: int, shuffle: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(pixel_values float [B, 3, S, S], labels long [B]); unlabelled and undecodable samples are skipped."""
        _check_batch_size(batch_size)
        return _batched(self._decoded(self._order(shuffle), transform), batch_size)

    def _decoded(self, order: Iterable[int], transform: FixedResTransform) -> Iterator[tuple[torch.Tensor, int]]:
        for i in map(int, order):
            raw = read_sample(self.dataset, i, os.path.join(self.data_dir, self.split))
            label = self._label(raw, i)
            if label < 0:
                self.unlabelled.add(i)
                continue
            try:
                image = decode_image(raw["image"])
            except ValueError as exc:
                if i not in self.corrupt:
                    log.warning("skipping sample %d of %s/%s: %s", i, self.data_dir, self.split, exc)
                self.corrupt.add(i)
                continue
            yield transform(image), label
