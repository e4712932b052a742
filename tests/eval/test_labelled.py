"""Labelled image sets for probes: an ImageFolder of rendered digits (with a corrupt and a non-image file),
the train/val folder layout, structural errors, labelled litdata shards, and an end-to-end probe run."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from genlip_lit.data.shards import optimize_synthetic, synthetic_sample, write_shards
from genlip_lit.data.synthetic import SceneConfig, class_names
from genlip_lit.data.transforms import FixedResTransform
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.labelled import ImageFolderSet, ShardLabelledSet
from genlip_lit.eval.probes import run_probes

# Folder names sort differently from digit order ("eight" is class 0, "zero" class 9): ids must follow names.
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PER_CLASS = 12
SCENE = SceneConfig(image_size=32, patch_size=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _digit(digit: int, rng: np.random.Generator) -> Image.Image:
    """A digit in PIL's default font at a random size, position and contrast on a 12 x 12 canvas, upscaled
    (bilinear) to a random 28-40 px square: small, blurry, varied - like scanned digits, unlike our scenes."""
    font = ImageFont.load_default(size=int(rng.integers(8, 13)))
    canvas = Image.new("L", (12, 12), int(rng.integers(0, 70)))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    x = int(rng.integers(-left, max(-left, 12 - right) + 1))
    y = int(rng.integers(-top, max(-top, 12 - bottom) + 1))
    draw.text((x, y), str(digit), fill=int(rng.integers(170, 256)), font=font)
    side = int(rng.integers(28, 41))
    return canvas.resize((side, side), Image.Resampling.BILINEAR).convert("RGB")


def _write_digits(root, per_class: int, seed: int = 0, names=DIGITS) -> None:
    rng = np.random.default_rng(seed)
    # every supported extension, in either case (ImageNet ships .JPEG)
    formats = [(".png", "PNG"), (".JPEG", "JPEG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP")]
    for digit, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            ext, fmt = formats[i % len(formats)]
            _digit(digit, rng).save(folder / f"{i:03d}{ext}", format=fmt)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    _write_digits(root, PER_CLASS)
    (root / "zero" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "zero" / "notes.txt").write_text("not an image")
    return root


def test_classes_ids_and_stratified_split(digits) -> None:
    ds = ImageFolderSet(str(digits), test_fraction=0.25, seed=0)
    assert ds.class_names == sorted(DIGITS) and ds.num_classes == 10
    assert ds.class_to_idx["eight"] == 0 and ds.class_to_idx["zero"] == 9
    assert ds.num_ignored == 1  # notes.txt
    train, val = ds.samples("train"), ds.samples("val")
    assert len(train) + len(val) == 10 * PER_CLASS + 1  # broken.png is an image file until it is read
    assert (ds.num_samples("train"), ds.num_samples("test")) == (len(train), len(val)) == (91, 30)
    assert not {p for p, _ in train} & {p for p, _ in val}
    for path, label in train + val:
        assert ds.class_names[label] == os.path.basename(os.path.dirname(path))
    assert all(sum(label == c for _, label in val) == 3 for c in range(10))  # round(0.25 * 12 or 13)
    # reading order is a seeded shuffle, so a budget prefix covers the classes
    assert len({label for _, label in train[:30]}) >= 8
    assert ImageFolderSet(str(digits), test_fraction=0.25, seed=0).samples("val") == val
    assert {p for p, _ in ImageFolderSet(str(digits), test_fraction=0.25, seed=1).samples("val")} != {p for p, _ in val}
    with pytest.raises(GenLIPUserError, match="unknown split"):
        ds.samples("holdout")


def test_batches_skip_and_count_the_corrupt_image(digits) -> None:
    ds = ImageFolderSet(str(digits), test_fraction=0.25, seed=0)
    tf = FixedResTransform(32)
    seen = 0
    for split in ("train", "val"):
        batches = list(ds.batches(tf, 16, split))
        for pixels, labels in batches[:-1]:
            assert pixels.shape == (16, 3, 32, 32) and labels.shape == (16,)
        for pixels, labels in batches:
            assert pixels.dtype == torch.float32 and labels.dtype == torch.long
            assert -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0  # mean/std 0.5 normalisation
        seen += sum(len(labels) for _, labels in batches)
    assert seen == 10 * PER_CLASS and ds.num_corrupt == 1
    # batches follow samples() order, minus the corrupt file: pixels and labels stay aligned
    readable = [(p, label) for p, label in ds.samples("train") if not p.endswith("broken.png")]
    pixels, labels = next(ds.batches(tf, 16, "train"))
    assert labels.tolist() == [label for _, label in readable[:16]]
    torch.testing.assert_close(pixels[5], tf(Image.open(readable[5][0])))
    assert {os.path.basename(p) for p in ds.corrupt} == {"broken.png"}
    list(ds.batches(tf, 16, "train"))
    list(ds.batches(tf, 16, "val"))
    assert ds.num_corrupt == 1  # counted once per file, however often it is read
    with pytest.raises(ValueError, match="batch_size"):
        ds.batches(tf, 0)


def test_train_val_folders_are_the_splits(tmp_path) -> None:
    _write_digits(tmp_path / "train", 4, names=["a", "b", "c"])
    _write_digits(tmp_path / "val", 2, seed=1, names=["a", "b"])  # a val split may lack a class
    ds = ImageFolderSet(str(tmp_path))
    assert ds.class_names == ["a", "b", "c"] and "train/val" in ds.layout
    assert (ds.num_samples("train"), ds.num_samples("val")) == (12, 4)
    assert all("/val/" in p for p, _ in ds.samples("val"))
    _write_digits(tmp_path / "val", 1, names=["zzz"])
    with pytest.raises(GenLIPUserError, match="zzz"):
        ImageFolderSet(str(tmp_path))


def test_structural_problems_are_clear_user_errors(tmp_path) -> None:
    with pytest.raises(GenLIPUserError, match="does not exist"):
        ImageFolderSet(str(tmp_path / "nowhere"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(GenLIPUserError, match="no class folders"):
        ImageFolderSet(str(tmp_path / "flat"))
    _write_digits(tmp_path / "one", 3, names=["cats"])
    with pytest.raises(GenLIPUserError, match="only one class folder.*'cats'.*at least 2"):
        ImageFolderSet(str(tmp_path / "one"))
    _write_digits(tmp_path / "gap", 3, names=["cats", "dogs"])
    (tmp_path / "gap" / "emus").mkdir()
    (tmp_path / "gap" / "emus" / "readme.txt").write_text("photos to come")
    with pytest.raises(GenLIPUserError, match=r"emus.*holds no images"):
        ImageFolderSet(str(tmp_path / "gap"))
    (tmp_path / "gap" / "emus" / "readme.txt").unlink()
    (tmp_path / "gap" / "emus").rmdir()
    with pytest.raises(GenLIPUserError, match="test_fraction"):
        ImageFolderSet(str(tmp_path / "gap"), test_fraction=1.0)


# ---------------------------------------------------------------------------------------------- shards
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("shards") / "shapes")
    optimize_synthetic(out, num_train=24, num_val=8, seed=0, scene=SCENE)
    return out


def test_shard_set_reads_labelled_shards(shards) -> None:
    import litdata

    val = ShardLabelledSet(shards, "val")
    assert len(val) == 8 and val.class_names == class_names() and val.num_classes == len(class_names())
    raw = litdata.StreamingDataset(os.path.join(shards, "val"))
    stored = [int(raw[i]["label"]) for i in range(len(raw))]
    batches = list(val.batches(FixedResTransform(32), 3))
    assert [tuple(p.shape) for p, _ in batches] == [(3, 3, 32, 32), (3, 3, 32, 32), (2, 3, 32, 32)]
    assert all(p.dtype == torch.float32 for p, _ in batches)
    labels = torch.cat([y for _, y in batches]).tolist()
    assert sorted(labels) == sorted(stored)
    in_order = torch.cat([y for _, y in val.batches(FixedResTransform(32), 3, shuffle=False)]).tolist()
    assert in_order == stored
    assert val.num_unlabelled == val.num_corrupt == 0
    with pytest.raises(GenLIPUserError, match=r"no litdata split 'test'.*\['train', 'val'\]"):
        ShardLabelledSet(shards, "test")
    with pytest.raises(GenLIPUserError, match="does not exist"):
        ShardLabelledSet(shards + "-missing")


def _mixed_sample(index: int) -> dict:
    """Labels 0..2; sample 1 unlabelled (-1), sample 4 corrupt; no genlip_meta.json next to these shards."""
    sample = synthetic_sample(index, 7, SCENE)
    sample["label"] = -1 if index == 1 else index % 3
    if index == 4:
        sample["image"] = b"\xff\xd8 not a jpeg"
    return sample


def test_shard_set_skips_unlabelled_and_corrupt(tmp_path) -> None:
    write_shards(functools.partial(_mixed_sample), 7, str(tmp_path / "val"))
    ds = ShardLabelledSet(str(tmp_path), "val")
    assert ds.num_classes == 3 and ds.class_names == ["0", "1", "2"]  # no metadata: largest label + 1
    labels = torch.cat([y for _, y in ds.batches(FixedResTransform(32), 4, shuffle=False)]).tolist()
    assert labels == [0, 2, 0, 2, 0]  # indices 0, 2, 3, 5, 6
    assert (ds.num_unlabelled, ds.num_corrupt) == (1, 1)


# ---------------------------------------------------------------------------------------------- end to end
def test_untrained_genlip_through_run_probes_on_digits(digits) -> None:
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.modules import GenLIPModule

    torch.manual_seed(0)
    module = GenLIPModule(
        arch="tiny",
        arch_overrides={"depth": 1, "width": 32, "ffn_hidden": 64},
        tokenizer=OpenCLIPTokenizer(compact_corpus="synthetic"),
    ).train()
    data = ImageFolderSet(str(digits), test_fraction=0.25, seed=0)
    tf = FixedResTransform(32)
    results = run_probes(
        module,
        data.batches(tf, 32, "train"),
        data.batches(tf, 32, "val"),
        data.num_classes,
        budget=64,
        attentive_kwargs={"epochs": 10},
    )
    assert module.training  # extraction put it back in train mode
    for name, r in results.items():
        assert 0.0 <= r.top1 <= 1.0, name
        assert (r.num_train, r.num_test, r.num_classes) == (64, 30, 10)
    print({name: round(r.top1, 3) for name, r in results.items()})
