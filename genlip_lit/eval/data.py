"""The data an evaluation reads: a view with batches and what they mean (class names, words, templates, maps).

    view = DataModuleView(datamodule, device)                     # the shards a run trains on (its val split)
    view = ImageFolderView("data/imagenette", Preprocessing(224))  # CLASS/*.jpg, or train/ and val/ folders
    view = ShardView("data/pets", Preprocessing(224))              # labelled shards from `genlip optimize`
    for batch in view.batches("val", budget=256, batch_size=64): ...

Every evaluation takes a view, so none of them knows where data comes from or what it shows. What the data is
about comes from the shards' `genlip_meta.json` (written by `genlip optimize`: `class_names`, and `source:
synthetic` for the embedded scenes, whose words, templates and label maps `data/synthetic.py` describes) or from
the folder names of an ImageFolder. Views yield `EvalBatch`es of normalized pixels on the view's device, in a
fixed order (the same samples every time: eval/labelled.py's `reading_order` for every view), at most `budget`
of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from genlip_lit.data.transforms import Preprocessing
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.labelled import (
    ImageFolderSet,
    ShardLabelledSet,
    describe_order,
    read_meta,
    reading_order,
)

# Zero-shot prompts for data that brings none (a real corpus, an ImageFolder): CLIP's plainest template.
GENERIC_TEMPLATES = ("a photo of a {}.",)
# Batch fields holding per-patch label maps, by the map names of `synthetic.patch_label_words()`
PATCH_LABEL_FIELDS = {"shape": "patch_shape", "color": "patch_color"}


def resolve_device(name: str | torch.device) -> torch.device:
    """A device name: "auto" = CUDA when available, else CPU; anything else as torch reads it."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Vocabulary:
    """What the samples of a view mean, beyond pixels."""

    class_names: list[str] | None = None  # labels index this list; None = unknown (probes count labels)
    words: list[str] | None = None  # candidate words of the patch readout; None = the class names
    templates: list[str] = field(default_factory=lambda: list(GENERIC_TEMPLATES))  # zero-shot prompts with "{}"
    patch_label_words: dict[str, list[str]] = field(default_factory=dict)  # label map name -> value v names [v - 1]

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Vocabulary:
        """From a `genlip_meta.json`: the embedded scenes' full description, or a corpus' class names."""
        if meta.get("source") == "synthetic":
            return cls.synthetic(meta.get("world"))
        names = meta.get("class_names")
        return cls(class_names=[str(n) for n in names] if names else None)

    @classmethod
    def synthetic(cls, world: str | None = None) -> Vocabulary:
        """The embedded scenes' (`world` "rich": data/world.py's; else data/synthetic.py's)."""
        if world == "rich":
            from genlip_lit.data import world as rich

            return cls(rich.class_names(), rich.caption_vocabulary(), rich.zero_shot_templates(),
                       rich.patch_label_words())
        from genlip_lit.data import synthetic

        return cls(synthetic.class_names(), synthetic.caption_vocabulary(), synthetic.zero_shot_templates(),
                   synthetic.patch_label_words())


@dataclass
class EvalBatch:
    """Normalized images and whatever the data knows about them."""

    pixel_values: Tensor  # [B, 3, H, W] float, normalized, on the view's device
    labels: Tensor | None = None  # [B] long image class, -1 = unknown
    captions: list[str] = field(default_factory=list)  # reference captions (empty: none)
    input_ids: Tensor | None = None  # captions in the model's text format (for attention over text)
    text_mask: Tensor | None = None
    patch_labels: dict[str, Tensor] = field(default_factory=dict)  # map name -> [B, rows, cols], 0 = background

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])


class EvalView:
    """Batches of one data source and its `Vocabulary`; subclasses implement `_batches(split, batch_size)`."""

    splits: tuple[str, ...] = ("train", "val")

    def __init__(self, vocabulary: Vocabulary, device: torch.device | str = "cpu", source: str = "") -> None:
        self.vocabulary = vocabulary
        self.device = resolve_device(device)
        self.source = source

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"

    @property
    def class_names(self) -> list[str] | None:
        return self.vocabulary.class_names

    def batches(self, split: str, budget: int, batch_size: int = 64) -> Iterator[EvalBatch]:
        """Up to `budget` samples of `split` ("train" or "val") in a fixed order, on the view's device."""
        if split not in self.splits:
            raise GenLIPUserError(f"{self}: no split {split!r} (splits: {list(self.splits)})")
        seen = 0
        for batch in self._batches(split, batch_size):
            if seen >= budget:
                return
            take = min(len(batch), budget - seen)
            if take < len(batch):
                batch = _head(batch, take)
            seen += take
            if len(batch):
                yield batch

    def labelled(self, split: str, budget: int, batch_size: int = 64) -> Iterator[tuple[Tensor, Tensor]]:
        """(pixel_values, labels on the CPU) pairs for probes and zero-shot; no labels = unlabelled (-1)."""
        for b in self.batches(split, budget, batch_size):
            labels = b.labels if b.labels is not None else torch.full((len(b),), -1, dtype=torch.long)
            yield b.pixel_values, labels.cpu()

    def _batches(self, split: str, batch_size: int) -> Iterator[EvalBatch]:
        raise NotImplementedError


def _head(batch: EvalBatch, n: int) -> EvalBatch:
    """The first n samples of a batch."""
    return EvalBatch(
        batch.pixel_values[:n],
        None if batch.labels is None else batch.labels[:n],
        batch.captions[:n],
        None if batch.input_ids is None else batch.input_ids[:n],
        None if batch.text_mask is None else batch.text_mask[:n],
        {k: v[:n] for k, v in batch.patch_labels.items()},
    )


class DataModuleView(EvalView):
    """The held-out data of a `GenLIPDataModule` (its first dataset): unpacked, at `image_size`, read in
    `reading_order` (a seeded shuffle, as `genlip probe` reads the same shards: the same samples, the same figures)."""

    sample_order = describe_order()  # which samples a budget takes (probe reports state it)

    def __init__(self, datamodule: Any, device: torch.device | str = "cpu") -> None:
        base = datamodule.data_dirs[0]
        meta = read_meta(base)  # class names: local or in object storage
        synthetic = getattr(datamodule, "synthetic", None)
        world = synthetic.get("world") if isinstance(synthetic, dict) else None
        vocabulary = Vocabulary.synthetic(world) if synthetic else Vocabulary.from_meta(meta)
        super().__init__(vocabulary, device, base)
        self.datamodule = datamodule

    def _batches(self, split: str, batch_size: int) -> Iterator[EvalBatch]:
        dm = self.datamodule
        if split == "val" and dm.val_dataset is None:
            dm.setup("validate")  # checks the data is there (a synthetic cache, shards)
        for batch in dm.eval_batches(split, batch_size, reading_order):
            b = batch.to(self.device).normalized()
            maps = {name: getattr(b, f) for name, f in PATCH_LABEL_FIELDS.items() if getattr(b, f) is not None}
            yield EvalBatch(b.pixel_values, b.labels, list(b.captions), b.input_ids, b.text_mask, maps)


class ImageFolderView(EvalView):
    """An ImageNet-style tree (`root/CLASS/*.jpg`, or `root/train/...` and `root/val/...`; see `ImageFolderSet`),
    at a model's preprocessing. Class names are the folder names."""

    def __init__(
        self,
        root: str,
        preprocessing: Preprocessing,
        device: torch.device | str = "cpu",
        test_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.folder = ImageFolderSet(root, test_fraction=test_fraction, seed=seed)
        self.sample_order = f"its val/ folder or a seeded {test_fraction:.0%} held-out split (seed {seed})"
        super().__init__(Vocabulary(class_names=list(self.folder.class_names)), device, self.folder.root)
        self.transform = preprocessing.transform()

    def _batches(self, split: str, batch_size: int) -> Iterator[EvalBatch]:
        for pixels, labels in self.folder.batches(self.transform, batch_size, split):
            yield EvalBatch(pixels.to(self.device), labels.to(self.device))


class ShardView(EvalView):
    """Labelled litdata shards written by `genlip optimize` (fields image and label; class names from
    `genlip_meta.json`, else the label ids), at a model's preprocessing, in a seeded shuffle."""

    def __init__(self, data_dir: str, preprocessing: Preprocessing, device: torch.device | str = "cpu") -> None:
        self.sets = {split: ShardLabelledSet(data_dir, split) for split in ("train", "val")}
        self.sample_order = describe_order(self.sets["train"].seed)
        # class names from the metadata; None when it lists none (the probes then count the labels)
        super().__init__(Vocabulary.from_meta(read_meta(data_dir)), device, self.sets["train"].data_dir)
        self.transform = preprocessing.transform()

    def _batches(self, split: str, batch_size: int) -> Iterator[EvalBatch]:
        for pixels, labels in self.sets[split].batches(self.transform, batch_size):
            yield EvalBatch(pixels.to(self.device), labels.to(self.device))


def labelled_view(path: str, preprocessing: Preprocessing, device: torch.device | str = "cpu",
                  seed: int = 0) -> EvalView:
    """A labelled image set by its layout: shards (`train/index.json`, from `genlip optimize`) or an ImageFolder
    (`seed`: its held-out split when it has no val/ folder)."""
    from genlip_lit.storage import paths as storage

    if storage.is_remote(path):  # object storage holds shards (an ImageFolder is read from local disk)
        return ShardView(path, preprocessing, device)
    expanded = os.path.expanduser(path)
    if os.path.isfile(os.path.join(expanded, "train", "index.json")):
        return ShardView(expanded, preprocessing, device)
    return ImageFolderView(expanded, preprocessing, device, seed=seed)
