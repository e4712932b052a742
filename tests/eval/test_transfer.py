"""Transfer probes on real images (eval/transfer.py, eval/real_images.py, the TransferProbe callback): k-fold over
every image, the baselines and the binomial standard error in the output. A 300-digit slice of scikit-learn's set
stands in for the full 1,797 to keep the tests fast (the same code path)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genlip_lit.data.transforms import Preprocessing
from genlip_lit.eval import real_images
from genlip_lit.eval.real_images import RealImageView, RealSet
from genlip_lit.eval.transfer import binomial_se, kfold_majority, stratified_folds, transfer_evaluation


@pytest.fixture
def small_digits(monkeypatch):
    full = real_images.load_real_set("digits")
    subset = RealSet(full.images[:300], full.labels[:300], full.class_names, full.origin)
    monkeypatch.setitem(real_images.REAL_SETS, "digits", lambda: subset)
    return subset


@pytest.fixture(scope="module")
def module():
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.modules import GenLIPModule

    torch.manual_seed(0)
    return GenLIPModule(arch="tiny", arch_overrides={"depth": 1, "width": 32, "ffn_hidden": 64},
                        tokenizer=OpenCLIPTokenizer(compact_corpus="synthetic"))


def test_the_digits_ship_with_scikit_learn() -> None:
    s = real_images.load_real_set("digits")
    assert s.images.shape == (1797, 8, 8) and s.images.dtype == np.uint8 and s.images.max() == 255
    assert np.bincount(s.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert "CC BY 4.0" in s.origin


def test_folds_are_stratified_seeded_and_cover_every_sample() -> None:
    y = np.repeat(np.arange(4), [10, 7, 5, 3])
    folds = stratified_folds(y, 3, seed=0)
    assert sorted(np.unique(folds)) == [0, 1, 2]
    for c in range(4):  # each class spread evenly: fold sizes differ by at most one
        sizes = np.bincount(folds[y == c], minlength=3)
        assert sizes.max() - sizes.min() <= 1
    assert np.array_equal(folds, stratified_folds(y, 3, seed=0))
    assert not np.array_equal(folds, stratified_folds(y, 3, seed=1))


def test_majority_baseline_and_standard_error() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    folds = np.array([0, 1, 0, 1, 0, 1])
    # fold 0 tested on {0, 0, 1}: majority of {0, 1, 2} is 0 (lowest label on a tie) -> 2 right;
    # fold 1 tested on {0, 1, 2}: majority of {0, 0, 1} is 0 -> 1 right
    r = kfold_majority(y, folds)
    assert (r["correct"], r["num_images"]) == (3, 6) and r["top1"] == 0.5
    assert r["se"] == pytest.approx(math.sqrt(0.25 / 6))
    assert binomial_se(0.9, 1797) == pytest.approx(0.00708, abs=1e-5)


@pytest.mark.slow
def test_transfer_evaluation_rows_figures_and_cached_baselines(small_digits, module) -> None:
    view = RealImageView("digits", Preprocessing(32))
    r = transfer_evaluation(module, view, folds=3)
    rows = r.details["rows"]
    assert set(rows) == {"encoder_linear", "random_init_linear", "pixels_linear", "majority"}
    assert r.details["num_images"] == 300 and r.details["folds"] == 3
    for row in rows.values():  # every image held out once; the SE is the binomial one on all of them
        assert row["num_images"] == 300 and row["top1"] == row["correct"] / 300
        assert row["se"] == pytest.approx(binomial_se(row["top1"], 300))
    s = r.scalars
    assert s["transfer_digits/chance"] == 0.1
    assert s["transfer_digits/linear_se"] == rows["encoder_linear"]["se"]
    assert s["transfer_digits/majority_top1"] == kfold_majority(small_digits.labels, stratified_folds(
        small_digits.labels, 3, 0))["top1"]
    assert s["transfer_digits/pixels_linear_top1"] > 0.8  # raw 8x8 digits are nearly linearly separable
    margin = s["transfer_digits/linear_top1"] - s["transfer_digits/random_init_linear_top1"]
    assert s["transfer_digits/margin_vs_random_init"] == pytest.approx(margin)
    assert s["transfer_digits/margin_se"] == pytest.approx(math.hypot(rows["encoder_linear"]["se"],
                                                                      rows["random_init_linear"]["se"]))
    table = r.texts["transfer_digits/table"]
    assert r.details["layer"] == r.details["baselines"]["layer"] == "final"  # the default: the encoder's output
    for label in ("encoder", "random init", "raw pixels", "majority class", "uniform chance", "± is the binomial",
                  "layer 'final' (final LayerNorm output)"):
        assert label in table
    # a second run with the baselines of the first gives the same figures without recomputing them
    again = transfer_evaluation(module, view, folds=3, cached_baselines=r.details["baselines"])
    assert again.scalars == r.scalars


@pytest.mark.slow
def test_callback_runs_under_genlip_eval_wiring(small_digits, module) -> None:
    from genlip_lit.callbacks import TransferProbe
    from genlip_lit.commands.eval import build_evaluations

    (cb,) = build_evaluations([{"class_path": "TransferProbe", "init_args": {"folds": 2}}])
    assert isinstance(cb, TransferProbe) and cb.name == "transfer_digits"
    with pytest.raises(ValueError, match="unknown dataset"):
        TransferProbe(dataset="imagenet")
    with pytest.raises(ValueError, match="feature layer must be"):
        TransferProbe(layer="penultimate")
    assert cb.layer == "final" and TransferProbe(layer=-2).layer == -2

    class FakeDataModule:  # what the callback reads from a data module: the model's preprocessing
        image_size, mean, std = 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    from genlip_lit.eval.data import DataModuleView

    view = DataModuleView.__new__(DataModuleView)
    view.datamodule, view.device = FakeDataModule(), torch.device("cpu")
    real = cb.data_view(view)
    assert isinstance(real, RealImageView) and real.num_images == 300
    assert cb.plan(real)[1] == 300
    result = cb.evaluate(module, view)
    assert result.details["folds"] == 2 and result.details["layer"] == "final" and cb._baseline_rows is not None


@pytest.fixture(scope="module")
def two_block_module():
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.modules import GenLIPModule

    torch.manual_seed(0)
    return GenLIPModule(arch="tiny", arch_overrides={"depth": 2, "width": 32, "ffn_hidden": 64, "num_registers": 1},
                        tokenizer=OpenCLIPTokenizer(compact_corpus="synthetic")).eval()


def test_feature_layers_are_the_towers_hidden_states(two_block_module) -> None:
    from genlip_lit.errors import GenLIPUserError
    from genlip_lit.eval.features import extract_many, layer_patches

    m, x = two_block_module, torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        final = m.encode_patches(x)
        last, penultimate = layer_patches(m, x, -1), layer_patches(m, x, -2)
        embeddings, mean = layer_patches(m, x, 0), layer_patches(m, x, "mean")
        # the reference: the final features are the final LayerNorm of the last block's output
        assert torch.allclose(m.model.norm(last), final, atol=1e-6)
        assert torch.equal(layer_patches(m, x, "final"), final) and torch.equal(layer_patches(m, x, 2), last)
        assert torch.equal(layer_patches(m, x, 1), penultimate)
        assert torch.allclose(embeddings, m.model.embed_image(x)[0], atol=1e-6)  # registers dropped
        assert torch.allclose(mean, (penultimate + last) / 2, atol=1e-6)
        assert penultimate.shape == final.shape == (3, 16, 32)
        assert not torch.allclose(penultimate, last) and not torch.allclose(penultimate, final)
        # extraction honours the layer: pooled = the mean of that layer's patches
        feats, _, _ = extract_many({"encoder": m}, [(x, torch.arange(3))], layer=-2)
        assert torch.allclose(feats["encoder"].pooled, penultimate.mean(dim=1), atol=1e-6)
        assert torch.allclose(feats["encoder"].patches, penultimate, atol=1e-6)
    assert not any(blk._forward_hooks or blk._forward_pre_hooks for blk in m.model.blocks)  # hooks removed
    with pytest.raises(GenLIPUserError, match="out of range for a 2-block tower"):
        layer_patches(m, x, 3)
    with pytest.raises(ValueError, match="feature layer must be"):
        layer_patches(m, x, "penultimate")


def test_transfer_reads_the_layer_it_is_asked_for(small_digits, two_block_module, monkeypatch) -> None:
    from genlip_lit.eval import features, transfer

    assert transfer.DEFAULT_LAYER == "final"  # the encoder contract's features, what export gives
    view = RealImageView("digits", Preprocessing(32))
    asked = []

    def spy(encoders, batches, device, **kwargs):  # what the evaluation asks the extraction for, then stop
        asked.append((sorted(encoders), kwargs["layer"]))
        raise StopIteration

    monkeypatch.setattr(features, "extract_many", spy)
    for layer, expected in ((None, "final"), ("mean", "mean"), (-2, -2)):
        with pytest.raises(StopIteration):
            transfer_evaluation(two_block_module, view, folds=2, **({} if layer is None else {"layer": layer}))
        assert asked.pop() == (["encoder", "random_init"], expected)
    with pytest.raises(ValueError, match="cached baselines were read at layer 'final', not -2"):
        transfer_evaluation(two_block_module, view, folds=2, layer=-2,
                            cached_baselines={"layer": "final", "majority": {}})
