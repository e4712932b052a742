"""Data views (eval/data.py): what a view's samples mean comes from the data (shard metadata, folder names), and
its batches are normalized, capped and in a fixed order."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from genlip_lit.data import synthetic
from genlip_lit.data.transforms import Preprocessing
from genlip_lit.eval.data import GENERIC_TEMPLATES, ImageFolderView, Vocabulary, labelled_view


def test_vocabulary_from_metadata() -> None:
    embedded = Vocabulary.from_meta({"source": "synthetic", "class_names": ["ignored"]})
    assert embedded.class_names == synthetic.class_names() and embedded.words == synthetic.caption_vocabulary()
    assert embedded.templates == synthetic.zero_shot_templates()
    assert set(embedded.patch_label_words) == {"shape", "color"}
    corpus = Vocabulary.from_meta({"source": "manifest", "class_names": ["cat", "dog"]})
    assert corpus.class_names == ["cat", "dog"] and corpus.words is None and corpus.patch_label_words == {}
    assert corpus.templates == list(GENERIC_TEMPLATES)
    assert Vocabulary.from_meta({}).class_names is None  # unknown: the probes count the labels


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("b_dog", "a_cat", "c_owl"):
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_image_folder_view_batches(folder) -> None:
    view = labelled_view(str(folder), Preprocessing(16, (0.5,) * 3, (0.25,) * 3))
    assert isinstance(view, ImageFolderView) and view.class_names == ["a_cat", "b_dog", "c_owl"]
    batches = list(view.batches("train", budget=7, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]  # capped at the budget, the last batch cut
    b = batches[0]
    assert b.pixel_values.shape == (3, 3, 16, 16) and b.pixel_values.dtype == torch.float32
    assert b.pixel_values.min() >= -2.0 - 1e-6 and b.pixel_values.max() <= 2.0 + 1e-6  # (x - 0.5) / 0.25
    assert b.captions == [] and b.patch_labels == {}
    again = list(view.labelled("train", budget=7, batch_size=3))
    assert torch.equal(torch.cat([y for _, y in again]), torch.cat([b.labels for b in batches]).cpu())
    with pytest.raises(Exception, match="no split 'test'"):
        next(view.batches("test", 1))


def _labelled_sample(i: int) -> dict:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 40 * (i % 3), np.uint8)).save(buf, format="PNG")
    return {"image": buf.getvalue(), "caption": f"c{i}", "label": i % 3, "key": str(i)}


def test_shard_view_names_classes_from_metadata(tmp_path) -> None:
    from genlip_lit.data.shards import write_shards
    from genlip_lit.eval.data import ShardView

    for split, n in (("train", 9), ("val", 6)):
        write_shards(_labelled_sample, n, str(tmp_path / split))
    (tmp_path / "genlip_meta.json").write_text(json.dumps({"source": "manifest", "class_names": ["x", "y", "z"]}))
    view = labelled_view(str(tmp_path), Preprocessing(8))
    assert isinstance(view, ShardView) and view.class_names == ["x", "y", "z"]
    labels = torch.cat([y for _, y in view.labelled("val", budget=100)])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]


def _class_by_class_sample(i: int) -> dict:
    """Stored class by class (as `genlip optimize --labels folders` writes a category tree): label i // 8."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return {"image": buf.getvalue(), "caption": "a thing", "label": i // 8, "key": str(i)}


def test_a_runs_own_shards_and_probe_shards_read_the_same_samples(tmp_path) -> None:
    """`genlip eval` and the end-of-fit probe (DataModuleView over the run's data) read a budget of a split by
    the same rule as `genlip probe` on the same shards (ShardView): the same images, labels and order, so the
    same checkpoint gives the same probe figure; and a budget is a draw over all classes, not the first ones."""
    from genlip_lit.data.datamodule import GenLIPDataModule
    from genlip_lit.data.shards import write_shards
    from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer
    from genlip_lit.eval.data import DataModuleView, ShardView

    for split in ("train", "val"):
        write_shards(_class_by_class_sample, 24, str(tmp_path / split))
    (tmp_path / "genlip_meta.json").write_text(json.dumps({"source": "manifest", "class_names": ["x", "y", "z"]}))
    dm = GenLIPDataModule(data_dir=str(tmp_path), image_size=8, batch_size=4, num_workers=0,
                          caption_encoder=CaptionEncoder(OpenCLIPTokenizer(), max_len=8))
    dm.prepare_data()
    run_view, probe_view = DataModuleView(dm, "cpu"), labelled_view(str(tmp_path), Preprocessing(8))
    assert isinstance(probe_view, ShardView) and run_view.sample_order == probe_view.sample_order
    for split in ("train", "val"):
        ours = list(run_view.labelled(split, budget=9, batch_size=4))
        theirs = list(probe_view.labelled(split, budget=9, batch_size=4))
        assert [len(y) for _, y in ours] == [len(y) for _, y in theirs] == [4, 4, 1]
        assert torch.equal(torch.cat([x for x, _ in ours]), torch.cat([x for x, _ in theirs]))
        labels = torch.cat([y for _, y in ours])
        assert torch.equal(labels, torch.cat([y for _, y in theirs]))
        assert set(labels.tolist()) == {0, 1, 2}  # stored order's first 9 would be 8 x class 0 and one class 1
