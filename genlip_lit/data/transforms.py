"""Image decoding and the fixed-resolution (stage 1) transform: resize the shorter side, crop, normalize.

GenLIP stage 1 uses resize + crop only (no colour jitter or flips), mean/std 0.5.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from genlip_lit.data.batch import normalize_pixels


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
        image_size: int = 224,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        train: bool = False,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {tuple(mean)} and {tuple(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {tuple(std)}")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
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

    def _crop(self, img: Image.Image) -> Image.Image:
        s = self.image_size
        w, h = img.size
        if (w, h) == (s, s):
            return img
        if self.train:
            # torch's RNG: seeded per DataLoader worker, so crops differ across workers yet follow torch.manual_seed
            left = int(torch.randint(0, w - s + 1, ()).item())
            top = int(torch.randint(0, h - s + 1, ()).item())
        else:
            left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        """Resized and cropped, not yet normalized: uint8 [3, S, S] (what loaders ship; see Batch.normalized)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = self._crop(self._resize(img))
        array = np.asarray(img, dtype=np.uint8)  # [S, S, 3]
        return torch.from_numpy(array.transpose(2, 0, 1).copy())  # contiguous CHW

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Resized, cropped and normalized: float32 [3, S, S]."""
        return normalize_pixels(self.to_uint8(img), self.mean, self.std)
