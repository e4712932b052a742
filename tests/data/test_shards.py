"""data/shards.py: synthetic scenes -> litdata shards + metadata, and litdata's forced start method undone."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time

import numpy as np
import pytest

from genlip_lit.data import shards as opt
from genlip_lit.data.synthetic import SceneConfig, class_names, generate_scene
from genlip_lit.data.transforms import decode_image
from genlip_lit.errors import GenLIPUserError

SCENE = SceneConfig(image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("opt") / "data")
    meta = opt.optimize_synthetic(out, num_train=40, num_val=10, seed=3, scene=SCENE)
    return out, meta


def test_shards_hold_the_generated_scenes(shards) -> None:
    import litdata

    out, meta = shards
    train = litdata.StreamingDataset(os.path.join(out, "train"))
    val = litdata.StreamingDataset(os.path.join(out, "val"))
    assert (len(train), len(val)) == (40, 10)
    for i in (0, 17, 39):
        sample, ref = train[i], generate_scene(3, i, SCENE)
        assert set(sample) == {"image", "caption", "key", "label", "patch_shape", "patch_color"}
        assert sample["key"] == f"3/{i}"
        assert sample["caption"] == ref.caption and sample["label"] == ref.label
        assert sample["patch_shape"].dtype == np.uint8 and sample["patch_shape"].shape == (4, 4)
        assert np.array_equal(sample["patch_color"], ref.patch_color)
        # lossless PNG: decoded pixels equal the generated ones
        assert np.array_equal(np.asarray(decode_image(sample["image"])), np.asarray(ref.image))
    # val is a held-out stream: its first scene is the val seed's, not the train seed's
    assert val[0]["caption"] == generate_scene(3 + opt.VAL_SEED_OFFSET, 0, SCENE).caption
    on_disk = json.load(open(os.path.join(out, opt.META_FILE)))
    assert on_disk == meta
    assert meta["num_train"] == 40 and meta["num_val"] == 10 and meta["seed"] == 3
    assert meta["scene"]["image_size"] == 32 and meta["class_names"] == class_names()


def test_refuses_existing_dir_unless_overwrite(shards, tmp_path) -> None:
    out, _ = shards
    with pytest.raises(GenLIPUserError, match=out):
        opt.optimize_synthetic(out, num_train=4, num_val=2, scene=SCENE)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(GenLIPUserError, match="--overwrite"):
        opt.optimize_synthetic(str(other), num_train=4, num_val=2, scene=SCENE)
    meta = opt.optimize_synthetic(str(other), num_train=4, num_val=2, scene=SCENE, overwrite=True)
    assert meta["num_train"] == 4
    assert (other / "notes.txt").read_text() == "keep me"  # overwrite only replaces what optimize writes


def test_start_method_unchanged_and_progress_reported(shards, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("GENLIP_PROGRESS", "plain")
    caplog.set_level(logging.INFO, logger="genlip_lit.console.progress")
    before = multiprocessing.get_start_method()
    opt.optimize_synthetic(str(tmp_path / "d"), num_train=3, num_val=2, scene=SCENE)
    assert multiprocessing.get_start_method() == before
    lines = [r.getMessage() for r in caplog.records if r.name == "genlip_lit.console.progress"]
    assert lines[-2].startswith("synthetic data: 5/5 samples (100.0%)")  # counts, rate, elapsed, ETA
    assert "ETA" in lines[-2] and lines[-1].startswith("synthetic data: done, 5 samples in ")
    # even a litdata that forces spawn (its default) leaves the process as it was
    import litdata

    def forcing_optimize(**kwargs):
        multiprocessing.set_start_method("spawn", force=True)

    monkeypatch.setattr(litdata, "optimize", forcing_optimize)
    opt.write_shards(lambda i: {"x": i}, 2, str(tmp_path / "e"))
    assert multiprocessing.get_start_method() == before


def test_variable_size_scenes_round_trip_through_shards(tmp_path) -> None:
    import litdata

    scene = SceneConfig(image_size=32, max_image_size=96, patch_size=16, word_prob=1.0, word_font_px=9)
    before = multiprocessing.get_start_method()
    out = str(tmp_path / "var")
    meta = opt.optimize_synthetic(out, num_train=20, num_val=2, seed=5, scene=scene)
    assert multiprocessing.get_start_method() == before  # litdata's forced start method is undone
    assert meta["scene"]["max_image_size"] == 96 and meta["scene"]["word_font_px"] == 9
    train = litdata.StreamingDataset(os.path.join(out, "train"))
    assert len(train) == 20
    shapes = set()
    for i in range(20):
        sample, ref = train[i], generate_scene(5, i, scene)
        w, h = ref.size
        image = decode_image(sample["image"])
        assert image.size == (w, h)
        assert np.array_equal(np.asarray(image), np.asarray(ref.image))
        for key in ("patch_shape", "patch_color"):
            assert sample[key].dtype == np.uint8 and sample[key].shape == (h // 16, w // 16)
        assert np.array_equal(sample["patch_shape"], ref.patch_shape)
        assert np.array_equal(sample["patch_color"], ref.patch_color)
        assert sample["caption"] == ref.caption
        shapes.add(sample["patch_shape"].shape)
    assert len(shapes) > 5  # the maps really vary in shape from sample to sample


def _slow_sample(index: int) -> dict:
    time.sleep(0.02)
    return {"x": index}


def test_workers_report_their_counts_to_the_parent_while_writing(tmp_path) -> None:
    """litdata's workers are other processes: their counts reach the parent while they write, whatever the
    start method (files, not shared memory), and the last report is the total."""
    counts: list[int] = []
    opt.write_shards(_slow_sample, 120, str(tmp_path / "s"), num_workers=2, on_count=counts.append)
    assert counts[-1] == 120 and counts == sorted(counts)
    assert any(0 < c < 120 for c in counts), counts  # reported during the ~1.2 s of work, not only at the end


def test_counted_fn_survives_pickling_and_counts_per_process(tmp_path) -> None:
    import pickle

    counted = pickle.loads(pickle.dumps(opt._Counted(_slow_sample, str(tmp_path), every_s=0.0)))
    assert [counted(i) for i in range(3)] == [{"x": 0}, {"x": 1}, {"x": 2}]
    (tmp_path / "999999").write_text("4")  # another worker's count
    assert opt._counted_so_far(str(tmp_path)) == 3 + 4
