"""Image decoding and the two image transforms of GenLIP's training stages.

- Stage 1, `FixedResTransform`: resize the shorter side, crop a square, normalize (no colour jitter or flips,
  mean/std 0.5).
- Stage 2, `NativeResTransform`: keep the aspect ratio, resize so that the patch grid (h, w) holds between
  `min_patches` and `max_patches` patches (paper: 16 and 1024), sides rounded to patch multiples, no crop. The
  grid travels with the sample: the packer (data/packing.py) places each image's patches with its own M-RoPE grid.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from genlip_lit.data.batch import normalize_pixels

# The one home of the preprocessing defaults: GenLIP's stage 1, as the authors' image processor does it
# (google/siglip2-base-patch16-224: 224 px, mean = std = 0.5, i.e. pixels to [-1, 1]). The data module, the loaders,
# the transforms, `Preprocessing` (what a checkpoint without data settings is read with), the importers and the
# timm form all take them from here.
DEFAULT_IMAGE_SIZE = 224
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def checked_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std as float tuples; a ValueError unless both hold 3 values (RGB) and std > 0."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {tuple(mean)} and {tuple(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {tuple(std)}")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...) into a fully loaded PIL image.

    PIL signals bad data with several exception types (and some only on `load()`); they all become one
    `ValueError` so readers can skip a corrupt sample with a single `except`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"cannot decode image: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("cannot decode image: empty bytes")
    try:
        with warnings.catch_warnings():
            # truncated or odd files warn before they fail; the error below is what callers act on
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(bytes(data)))
            img.load()
    except Exception as exc:  # UnidentifiedImageError, OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(f"cannot decode image ({len(data)} bytes): {type(exc).__name__}: {exc}") from exc
    return img


class FixedResTransform:
    """PIL image -> normalized float tensor [3, S, S].

    Resize the shorter side to S (bicubic; PIL filters over the whole source footprint when shrinking, i.e. it
    antialiases), then crop S x S: random position when `train`, centered otherwise. An image that already is
    S x S is left untouched, so the embedded dataset at its native size costs no resampling.
    """

    def __init__(
        self,
        image_size: int = DEFAULT_IMAGE_SIZE,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        train: bool = False,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.mean, self.std = checked_mean_std(mean, std)
        self.train = bool(train)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, mean={self.mean}, std={self.std}, "
            f"train={self.train})"
        )

    def _resize(self, img: Image.Image) -> Image.Image:
        s = self.image_size
        w, h = img.size
        if min(w, h) == s:
            return img
        scale = s / min(w, h)
        # round, but never below S on either side so the crop always fits
        new_w, new_h = max(s, round(w * scale)), max(s, round(h * scale))
        return img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)

    def _crop(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        s = self.image_size
        w, h = img.size
        if (w, h) == (s, s):
            return img
        if self.train:
            # `generator`: the training loader passes one per sample (seeded by data seed, epoch and sample
            # index, see GenLIPStreamingDataset), so crops survive a resume; without one, torch's global RNG
            left = int(torch.randint(0, w - s + 1, (), generator=generator).item())
            top = int(torch.randint(0, h - s + 1, (), generator=generator).item())
        else:
            left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))

    def to_uint8(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Resized and cropped, not yet normalized: uint8 [3, S, S] (what loaders ship; see Batch.normalized).
        `generator` draws the random crop (train only)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = self._crop(self._resize(img), generator)
        array = np.asarray(img, dtype=np.uint8)  # [S, S, 3]
        return torch.from_numpy(array.transpose(2, 0, 1).copy())  # contiguous CHW

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Resized, cropped and normalized: float32 [3, S, S]."""
        return normalize_pixels(self.to_uint8(img), self.mean, self.std)


def native_grid(width: int, height: int, patch_size: int, min_patches: int = 16, max_patches: int = 1024) -> tuple[int, int]:
    """Patch grid (rows, cols) for an image of this size at (close to) its native aspect ratio.

    The image keeps its size when its grid already holds [min_patches, max_patches] patches (each side rounded to
    the nearest patch multiple); otherwise both sides scale by one factor to the nearest bound. Rounding can push
    the count just outside the bounds, so a last step trims the longer side or grows the shorter one.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1 <= min_patches <= max_patches:
        raise ValueError(f"need 1 <= min_patches <= max_patches, got {min_patches} and {max_patches}")
    rows, cols = height / patch_size, width / patch_size
    area = rows * cols
    scale = math.sqrt(min(max(area, min_patches), max_patches) / area)
    gh, gw = max(1, round(rows * scale)), max(1, round(cols * scale))
    while gh * gw > max_patches:  # rounding up overshot: trim the longer side (keeps the ratio closest)
        if gh >= gw:
            gh -= 1
        else:
            gw -= 1
    while gh * gw < min_patches:  # rounding down undershot (or an extreme ratio): grow the shorter side
        if gh <= gw:
            gh += 1
        else:
            gw += 1
    return gh, gw


class NativeResTransform:
    """PIL image -> tensor [3, gh * p, gw * p] at its native aspect ratio (see `native_grid`); no crop.

    `to_uint8` is what loaders ship (normalized after the device transfer, see Batch.normalized); calling the
    transform returns normalized float32 pixels for direct use with a model (any grid: M-RoPE places it).
    """

    def __init__(
        self,
        patch_size: int,
        min_patches: int = 16,
        max_patches: int = 1024,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
    ) -> None:
        if patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        if not 1 <= min_patches <= max_patches:
            raise ValueError(f"need 1 <= min_patches <= max_patches, got {min_patches} and {max_patches}")
        self.patch_size = int(patch_size)
        self.min_patches, self.max_patches = int(min_patches), int(max_patches)
        self.mean, self.std = checked_mean_std(mean, std)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(patch_size={self.patch_size}, min_patches={self.min_patches}, "
            f"max_patches={self.max_patches}, mean={self.mean}, std={self.std})"
        )

    def grid(self, img: Image.Image) -> tuple[int, int]:
        return native_grid(img.size[0], img.size[1], self.patch_size, self.min_patches, self.max_patches)

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        gh, gw = self.grid(img)
        size = (gw * self.patch_size, gh * self.patch_size)
        if img.size != size:
            img = img.resize(size, resample=Image.Resampling.BICUBIC)
        array = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return normalize_pixels(self.to_uint8(img), self.mean, self.std)


class SquashTransform:
    """PIL image -> [3, S, S] by resizing the whole image (aspect ratio not kept, nothing cropped away).

    The fixed-resolution evaluation of native-aspect-ratio data: a center crop would cut rendered words or
    objects out of wide or tall images, which no model could then read.
    """

    def __init__(self, image_size: int, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        size = (self.image_size, self.image_size)
        if img.size != size:
            img = img.resize(size, resample=Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return normalize_pixels(self.to_uint8(img), self.mean, self.std)


class Preprocessing:
    """How a trained model wants its images: side, mean and std, rebuilt from a checkpoint's data settings.

    The one place that reads them back (`genlip caption`, `probe`, `eval`, `eval-res`, `export`, the views of
    `eval/data.py`); missing keys fall back to the defaults above (224 px, mean/std 0.5).
    """

    def __init__(
        self,
        image_size: int = DEFAULT_IMAGE_SIZE,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
    ) -> None:
        self.image_size = int(image_size)
        self.mean, self.std = checked_mean_std(mean, std)

    @classmethod
    def from_hparams(cls, data_hparams: dict | None) -> Preprocessing:
        """From a checkpoint's `datamodule_hyper_parameters` (or a data module's hparams)."""
        d = dict(data_hparams or {})
        return cls(d.get("image_size", DEFAULT_IMAGE_SIZE), d.get("mean", DEFAULT_MEAN), d.get("std", DEFAULT_STD))

    def transform(self) -> FixedResTransform:
        """The evaluation transform: shorter side to `image_size`, centre crop, normalize."""
        return FixedResTransform(self.image_size, self.mean, self.std, train=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] -> the model's normalized float pixels."""
        return normalize_pixels(pixels, self.mean, self.std)

    def as_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    def __repr__(self) -> str:
        return f"Preprocessing(image_size={self.image_size}, mean={self.mean}, std={self.std})"
