"""Image decoding and the fixed-resolution transform."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from genlip_lit.data.transforms import FixedResTransform, decode_image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_decode_roundtrip_and_errors() -> None:
    img = Image.new("RGB", (5, 4), (10, 20, 30))
    out = decode_image(_png(img))
    assert out.size == (5, 4) and out.getpixel((0, 0)) == (10, 20, 30)
    assert decode_image(memoryview(_png(img))).size == (5, 4)  # litdata hands bytes back as memoryview
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(b"definitely not an image")
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(_png(img)[:40])  # truncated PNG: fails on load(), not on open()
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"")


def test_constant_image_normalization() -> None:
    img = Image.new("RGB", (40, 30), (255, 0, 51))
    t = FixedResTransform(image_size=16, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    x = t(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.0 - 0.5) / 0.25, (0.2 - 0.2) / 0.1])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(x, expected.view(3, 1, 1).expand_as(x), atol=1e-5)


def test_shapes_modes_and_passthrough() -> None:
    t = FixedResTransform(image_size=12)
    assert t(Image.new("L", (30, 20), 128)).shape == (3, 12, 12)  # grayscale -> RGB
    assert t(Image.new("RGBA", (7, 9))).shape == (3, 12, 12)  # upscaling works too
    # an image already at size S is only converted: pixel values survive exactly
    img = Image.frombytes("RGB", (12, 12), bytes(range(256)) * 1 + bytes(range(176)))
    x = t(img)
    ref = torch.tensor(list(img.getdata()), dtype=torch.float32).view(12, 12, 3).permute(2, 0, 1) / 255
    assert torch.allclose(x, (ref - 0.5) / 0.5, atol=1e-6)


def test_eval_is_deterministic_and_centered_train_crops_vary() -> None:
    # left half black, right half white: the crop position is visible in the mean
    img = Image.new("RGB", (64, 16), (0, 0, 0))
    img.paste((255, 255, 255), (32, 0, 64, 16))
    ev = FixedResTransform(image_size=16)
    a, b = ev(img), ev(img)
    assert torch.equal(a, b)
    assert torch.allclose(a.mean(), torch.tensor(0.0), atol=1e-6)  # centered: half black, half white
    tr = FixedResTransform(image_size=16, train=True)
    torch.manual_seed(0)
    means = {round(tr(img).mean().item(), 4) for _ in range(20)}
    assert len(means) > 3
    torch.manual_seed(0)
    again = {round(tr(img).mean().item(), 4) for _ in range(20)}
    assert means == again  # train crops follow torch's seed


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        FixedResTransform(image_size=0)
    with pytest.raises(ValueError):
        FixedResTransform(mean=(0.5, 0.5))


# ------------------------------------------------------------------ stage 2: native aspect ratio
def test_native_grid_keeps_the_patch_count_in_bounds_and_the_aspect_ratio() -> None:
    import math
    import random

    from genlip_lit.data.transforms import native_grid

    rng = random.Random(0)
    for _ in range(2000):
        w, h = rng.randint(1, 5000), rng.randint(1, 5000)
        gh, gw = native_grid(w, h, 16, 16, 1024)
        assert 16 <= gh * gw <= 1024 and gh >= 1 and gw >= 1
        if 1 / 8 <= w / h <= 8 and 16 * 16 * 20 <= w * h:  # not extreme: the ratio survives rounding
            assert abs(math.log((gw / gh) / (w / h))) < 0.35
    assert native_grid(224, 224, 16) == (14, 14)  # in range: the size is kept
    assert native_grid(160, 96, 8) == (12, 20)
    assert native_grid(4000, 3000, 16) == (28, 36)  # too many patches: scaled down to <= 1024
    assert native_grid(10, 10, 16) == (4, 4)  # too few: scaled up to >= 16
    assert native_grid(10000, 10, 16) == (1, 625)  # extreme ratios stay within bounds
    with pytest.raises(ValueError, match="min_patches"):
        native_grid(10, 10, 16, 20, 10)
    with pytest.raises(ValueError, match="positive"):
        native_grid(0, 10, 16)


def test_native_transform_resizes_to_its_grid_without_cropping() -> None:
    from genlip_lit.data.transforms import NativeResTransform, SquashTransform

    t = NativeResTransform(patch_size=8, min_patches=16, max_patches=64)
    img = Image.new("RGB", (160, 96), (255, 0, 0))
    img.paste((0, 0, 255), (150, 0, 160, 96))  # a blue strip at the right edge: a crop would lose it
    out = t.to_uint8(img)
    assert out.dtype == torch.uint8 and out.shape == (3, 6 * 8, 10 * 8)
    assert out[2, :, -1].float().mean() > 200  # the right edge is still blue
    same = t.to_uint8(Image.new("L", (48, 32), 7))  # in range: kept as is (and made RGB)
    assert same.shape == (3, 32, 48) and int(same.max()) == 7
    normalized = t(img)
    assert normalized.dtype == torch.float32 and float(normalized.max()) == pytest.approx(1.0)
    squash = SquashTransform(64).to_uint8(img)
    assert squash.shape == (3, 64, 64) and squash[2, :, -1].float().mean() > 200
    with pytest.raises(ValueError, match="patch_size"):
        NativeResTransform(0)


def test_every_preprocessing_default_is_the_one_in_transforms() -> None:
    """A checkpoint without data settings must be read back (eval, export, timm form, imports) exactly as the
    data module trains by default: every default comes from data/transforms.py, none is restated."""
    import inspect

    from genlip_lit.convert.official import DEFAULT_PREPROCESSING
    from genlip_lit.data.datamodule import GenLIPDataModule
    from genlip_lit.data.packing import PackingCollator
    from genlip_lit.data.streaming import BatchCollator
    from genlip_lit.data.transforms import (
        DEFAULT_IMAGE_SIZE,
        DEFAULT_MEAN,
        DEFAULT_STD,
        NativeResTransform,
        Preprocessing,
        SquashTransform,
    )
    from genlip_lit.plan.probe import ProbeRequest

    defaults = {"image_size": DEFAULT_IMAGE_SIZE, "mean": DEFAULT_MEAN, "std": DEFAULT_STD}
    for owner in (GenLIPDataModule, FixedResTransform, Preprocessing, NativeResTransform, SquashTransform,
                  PackingCollator, BatchCollator, ProbeRequest):
        params = inspect.signature(owner).parameters
        found = {k: params[k].default for k in defaults if k in params and params[k].default is not params[k].empty}
        assert found and found == {k: defaults[k] for k in found}, owner.__name__
    as_dict = {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}  # GenLIP stage 1 (SigLIP2's processor)
    assert Preprocessing.from_hparams({}).as_dict() == Preprocessing().as_dict() == DEFAULT_PREPROCESSING == as_dict
