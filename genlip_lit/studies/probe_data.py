"""What the streamed full-dataset probe (`genlip probe-full`) reads: every labelled image, every epoch, by mini-batch.

    dm = ProbeDataModule("data/in1k", batch_size=1024)     # labelled shards (`genlip optimize --labels folders`)
    dm = ProbeDataModule("data/pets", augment="none")      # or an ImageFolder: CLASS/*.jpg, train/ + val/
    dm.connect(preprocessing)                              # the encoder's image size, mean and std

The usual frozen-feature protocol: RandomResizedCrop (scale 0.08-1, aspect 3/4-4/3, bicubic) + horizontal flip
for train; resize the shorter side to size / `val_crop_fraction` + centre crop for val (0.875: 256 -> 224).
`augment: none` gives train the val transform at crop fraction 1 (shorter side to the size, centre crop); with
`val_crop_fraction: 1` too, both splits are exactly what the in-memory probes (`eval/probes.py`) read, for
comparing the two.

Order, augmentation and resume are exact and independent of the number of workers: `EpochSampler` draws epoch
e's order as the (e+1)-th `torch.randperm` of a generator seeded with `seed` (the in-memory attentive probe's
order), rank r of W takes every W-th index (so W ranks at batch B/W see the same global batches as 1 process at
B), and hands out (index, epoch) pairs; each sample's crop and flip come from a generator seeded by (seed, epoch,
index). The train loader is stateful for Lightning: a checkpoint records the epoch and the batches trained, and a
resume skips exactly those. Shards are read by index through litdata, from local disk or object storage (s3://, as
`genlip fit` reads them; an ImageFolder must be local); an image that does not decode and a shard sample labelled -1 come out with label -1, which
the probe leaves out of its loss and counts, so no sample stops a run.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from genlip_lit.data.transforms import (
    DEFAULT_IMAGE_SIZE,
    FixedResTransform,
    Preprocessing,
    decode_image,
    normalize_pixels,
)
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.labelled import ImageFolderSet, ShardLabelledSet, read_meta

log = logging.getLogger(__name__)

UNLABELLED = -1  # the label of a sample the probe must not learn from (undecodable, or unlabelled in shards)


class ProbeTransform:
    """PIL image -> normalized float [3, S, S]: train (RandomResizedCrop + flip, from a per-sample generator) or
    eval (resize to S / crop_fraction, centre crop)."""

    def __init__(self, preprocessing: Preprocessing, train: bool, crop_scale: tuple[float, float] = (0.08, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5,
                 crop_fraction: float = 0.875) -> None:
        if not 0 < crop_fraction <= 1:
            raise GenLIPUserError(f"val_crop_fraction must be in (0, 1], got {crop_fraction}")
        if not (0 < crop_scale[0] <= crop_scale[1] <= 1 and 0 < crop_ratio[0] <= crop_ratio[1]):
            raise GenLIPUserError(f"crop_scale must be 0 < lo <= hi <= 1 and crop_ratio 0 < lo <= hi, got "
                                  f"{crop_scale} / {crop_ratio}")
        self.size, self.mean, self.std = preprocessing.image_size, preprocessing.mean, preprocessing.std
        self.train, self.scale, self.ratio, self.flip = train, crop_scale, crop_ratio, flip
        self.resize = FixedResTransform(round(self.size / crop_fraction), self.mean, self.std)

    def _box(self, width: int, height: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop box: 10 tries at a random area and log-uniform aspect, then centre."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=g).tolist()
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return left, top, left + w, top + h
        ratio = width / height
        w, h = (width, round(width / self.ratio[0])) if ratio < self.ratio[0] else \
            (round(height * self.ratio[1]), height) if ratio > self.ratio[1] else (width, height)
        w, h = min(w, width), min(h, height)
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        if not self.train:
            pixels = self.resize.to_uint8(img)  # shorter side to S / crop_fraction, centre crop of that side
            if pixels.shape[-1] != self.size:
                top = (pixels.shape[-2] - self.size) // 2
                left = (pixels.shape[-1] - self.size) // 2
                pixels = pixels[:, top : top + self.size, left : left + self.size]
            return normalize_pixels(pixels, self.mean, self.std)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        img = img.crop(self._box(*img.size, g)).resize((self.size, self.size), Image.Resampling.BICUBIC)
        if float(torch.rand((), generator=g)) < self.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
        return normalize_pixels(array, self.mean, self.std)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch (the same in any worker, on any rank, after a resume)."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63 - 1)


class LabelledImages(Dataset):
    """One split of an ImageFolder or of labelled shards: item (index, epoch) -> {pixels, label, key}."""

    def __init__(self, data: str, split: str, transform: Callable[..., torch.Tensor], seed: int = 0,
                 test_fraction: float = 0.2) -> None:
        self.data, self.split, self.transform, self.seed = data, split, transform, seed
        self.shards = is_shard_dir(data)
        if self.shards:
            self.set = ShardLabelledSet(data, split, seed=seed)
            self.files: list[tuple[str, int]] = []
        else:
            self.folder = ImageFolderSet(data, test_fraction=test_fraction, seed=seed)
            self.files = self.folder.samples(split)  # the in-memory probes' order: same index, same image

    def __len__(self) -> int:
        return len(self.set) if self.shards else len(self.files)

    def _read(self, index: int) -> tuple[Image.Image | None, int, str]:
        if self.shards:
            raw = self.set.dataset[index]
            label = self.set._label(raw, index)
            try:
                return decode_image(raw["image"]), label, str(raw.get("key", index))
            except ValueError as exc:
                log.warning("skipping sample %d (%s) of %s/%s: %s", index, raw.get("key"), self.data, self.split, exc)
                return None, UNLABELLED, str(raw.get("key", index))
        path, label = self.files[index]
        key = os.path.relpath(path, self.folder.root)
        try:
            with open(path, "rb") as fh:
                return decode_image(fh.read()), label, key
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", path, exc)
            return None, UNLABELLED, key

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        image, label, key = self._read(int(index))
        size = getattr(self.transform, "size", None) or self.transform.image_size
        if image is None:
            return {"pixels": torch.zeros(3, size, size), "label": UNLABELLED, "key": key}
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, int(index)))
        try:
            pixels = self.transform(image, g)
        except TypeError:  # FixedResTransform (augment: none) takes no generator
            pixels = self.transform(image)
        return {"pixels": pixels, "label": label, "key": key}


class EpochSampler(DistributedSampler):
    """Seeded per-epoch order, rank r of W taking order[r::W] (padded by wrapping so every rank has as many),
    as (index, epoch) pairs; `resume_at` skips what a checkpoint says was trained. A DistributedSampler, so
    Lightning keeps it (and calls set_epoch) instead of wrapping it in its own."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 pad: bool = True) -> None:
        self.size, self.num_replicas, self.rank, self.shuffle, self.seed = size, num_replicas, rank, shuffle, seed
        self.pad, self.epoch, self._resume = pad, 0, (-1, 0)
        self.num_samples = math.ceil(size / num_replicas) if pad else len(range(rank, size, num_replicas))
        self.total_size = self.num_samples * num_replicas

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch):  # the in-memory probe draws one permutation per epoch from one generator
            torch.randperm(self.size, generator=g)
        return torch.randperm(self.size, generator=g).tolist()

    def resume_at(self, epoch: int, samples_done: int) -> None:
        self._resume = (epoch, samples_done)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.epoch)
        if self.pad and self.total_size > len(order):
            order += (order * math.ceil(self.total_size / max(len(order), 1)))[: self.total_size - len(order)]
        mine = order[self.rank : self.total_size if self.pad else None : self.num_replicas]
        skip = self._resume[1] if self._resume[0] == self.epoch else 0
        self._resume = (-1, 0)
        return iter([(i, self.epoch) for i in mine[skip:]])

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A DataLoader whose state (epoch, batches trained) goes into Lightning's checkpoints: a resume skips exactly
    the batches the checkpoint had trained, whatever the workers had prefetched."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self.batches_done())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(int(state["epoch"]), int(state["batches"]) * int(self.batch_size or 1))


def is_shard_dir(path: str) -> bool:
    from genlip_lit.storage import paths as storage

    base = path if storage.is_remote(path) else os.path.expanduser(path)
    return storage.isfile(storage.join(base, "train", "index.json"))


class ProbeDataModule(L.LightningDataModule):
    """Labelled images for `genlip probe-full`. `batch_size` is the GLOBAL batch, split evenly over the ranks.

    Args:
        data: `genlip optimize --labels folders` shards (local or s3://...), or a local ImageFolder.
        batch_size: the GLOBAL batch, split evenly over the processes (8 GPUs at 1024: 128 each).
        val_batch_size: the global val batch (null: batch_size).
        num_workers: decoding workers per process.
        augment: train transform: random_resized_crop (+ flip), or none (val's at crop fraction 1).
        crop_scale: RandomResizedCrop's area range.
        crop_ratio: RandomResizedCrop's aspect-ratio range.
        flip: horizontal flip probability.
        val_crop_fraction: val: shorter side to image_size / this (256 for 224 at 0.875), then centre crop.
        image_size: null: the encoder's.
        test_fraction: an ImageFolder without val/: the share of each class held out.
        seed: the order of every epoch and each image's crop and flip.
    """

    def __init__(self, data: str, batch_size: int = 1024, val_batch_size: int | None = None, num_workers: int = 8,
                 augment: Literal["random_resized_crop", "none"] = "random_resized_crop",
                 crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: float = 0.5, val_crop_fraction: float = 0.875, image_size: int | None = None,
                 test_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or num_workers < 0:
            raise GenLIPUserError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got {batch_size} / "
                                  f"{num_workers}")
        from genlip_lit.storage import paths as storage

        if storage.is_remote(data):  # labelled shards in a bucket, streamed as fit streams them
            expanded = data.rstrip("/")
            if not is_shard_dir(expanded):
                raise GenLIPUserError(f"data.data {data}: no train/ litdata shards there (write them with `genlip "
                                      "optimize --labels folders --output URL`); ImageFolders must be local")
        elif not os.path.isdir(expanded := os.path.expanduser(data)):
            raise GenLIPUserError(f"data.data {data}: no such directory (labelled shards from `genlip optimize "
                                  "--labels folders`, or an ImageFolder)")
        self.data = expanded
        self.preprocessing = Preprocessing(image_size or DEFAULT_IMAGE_SIZE)
        self._classes: list[str] | None = None
        self._train: LabelledImages | None = None  # built once (the file listing of a large folder takes a while)

    def connect(self, preprocessing: Preprocessing) -> None:
        """The encoder's preprocessing (mean, std, and the size unless `image_size` sets one)."""
        size = self.hparams.image_size or preprocessing.image_size
        self.preprocessing = Preprocessing(size, preprocessing.mean, preprocessing.std)
        self._train = None

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            if is_shard_dir(self.data):
                names = read_meta(self.data).get("class_names")
                self._classes = [str(n) for n in names] if names else ShardLabelledSet(self.data, "train").class_names
            else:
                self._classes = ImageFolderSet(self.data, self.hparams.test_fraction, self.hparams.seed).class_names
        return list(self._classes)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_rank_batch(self, batch_size: int) -> int:
        world, _ = self._world()
        if batch_size % world:
            raise GenLIPUserError(f"data.batch_size {batch_size} does not split evenly over {world} processes: use "
                                  "a multiple of the process count")
        return batch_size // world

    def _transform(self, train: bool) -> Callable[..., torch.Tensor]:
        h = self.hparams
        if train and h.augment == "none":
            return ProbeTransform(self.preprocessing, train=False, crop_fraction=1.0)
        return ProbeTransform(self.preprocessing, train, tuple(h.crop_scale), tuple(h.crop_ratio), h.flip,
                              h.val_crop_fraction)

    def dataset(self, split: str) -> LabelledImages:
        return LabelledImages(self.data, split, self._transform(split == "train"), self.hparams.seed,
                              self.hparams.test_fraction)

    def _train_set(self) -> LabelledImages:
        if self._train is None:
            self._train = self.dataset("train")
        return self._train

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch on every rank (the schedule's unit)."""
        world, _ = self._world()
        return math.ceil(math.ceil(len(self._train_set()) / world) / self.per_rank_batch(self.hparams.batch_size))

    def train_dataloader(self) -> ResumableLoader:
        world, rank = self._world()
        data = self._train_set()
        sampler = EpochSampler(len(data), world, rank, shuffle=True, seed=self.hparams.seed)

        def batches_done() -> int:  # trained batches of this epoch, as Lightning counts them at a checkpoint
            return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

        return ResumableLoader(data, batch_size=self.per_rank_batch(self.hparams.batch_size), sampler=sampler,
                               num_workers=self.hparams.num_workers, batches_done=batches_done,
                               persistent_workers=False, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        world, rank = self._world()
        data = self.dataset("val")
        sampler = EpochSampler(len(data), world, rank, shuffle=False, pad=False)  # each image once, all ranks
        return DataLoader(data, batch_size=self.per_rank_batch(self.hparams.val_batch_size or self.hparams.batch_size),
                          sampler=sampler, num_workers=self.hparams.num_workers, pin_memory=torch.cuda.is_available())


__all__ = ["EpochSampler", "LabelledImages", "ProbeDataModule", "ProbeTransform", "ResumableLoader"]
