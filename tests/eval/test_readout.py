"""Patch readout: accuracy against the embedded label maps, and its chance levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genlip_lit.data.synthetic import SceneConfig, caption_vocabulary, generate_scene, patch_label_words
from genlip_lit.eval.readout import readout, uniform_chance

WORDS = caption_vocabulary()
LABEL_WORDS = patch_label_words()
COLOR_NAMES = LABEL_WORDS["color"]
SCENE = SceneConfig(image_size=32, patch_size=8, min_objects=2, max_objects=3)


def _maps(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = [generate_scene(0, i, SCENE) for i in range(n)]
    shape = torch.from_numpy(np.stack([s.patch_shape for s in scenes])).long()
    color = torch.from_numpy(np.stack([s.patch_color for s in scenes])).long()
    return shape, color


def _oracle_scores(shape: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """A readout whose 'LM head' maps each patch to its own colour word (background patches: 'the')."""
    b, gh, gw = shape.shape
    scores = torch.zeros(b, gh * gw, len(WORDS))
    flat = color.reshape(b, -1)
    for i in range(b):
        for p in range(gh * gw):
            word = COLOR_NAMES[int(flat[i, p]) - 1] if flat[i, p] > 0 else "the"
            scores[i, p, WORDS.index(word)] = 1.0
    return scores


def test_oracle_reads_every_patch_and_beats_both_chances() -> None:
    shape, color = _maps()
    result = readout(_oracle_scores(shape, color), WORDS, {"shape": shape, "color": color}, LABEL_WORDS, k=1)
    assert result.accuracy == 1.0 and result.num_patches == int((shape > 0).sum())
    assert result.chance_permuted < 0.8 and math.isclose(result.chance_uniform, 2 / len(WORDS))
    assert result.top_words[0][0][0] in WORDS and len(result.top_words) == 8


def test_random_scores_sit_near_uniform_chance() -> None:
    shape, color = _maps(32)
    scores = torch.randn(32, 16, len(WORDS), generator=torch.Generator().manual_seed(0))
    result = readout(scores, WORDS, {"shape": shape, "color": color}, LABEL_WORDS, k=5)
    assert abs(result.accuracy - result.chance_uniform) < 0.1


def test_uniform_chance_formula() -> None:
    assert math.isclose(uniform_chance(10, 1), 0.2)
    assert math.isclose(uniform_chance(10, 2), 1 - (8 * 7) / (10 * 9))
    assert uniform_chance(3, 2) == 1.0


def test_any_label_maps_work_and_one_map_means_one_target() -> None:
    """Not only the embedded shape/colour maps: one map of 3 classes, words named by the caller."""
    words = ["cat", "dog", "owl", "sky"]
    labels = torch.tensor([[[1, 2], [3, 0]]])  # 2x2 patches: cat, dog / owl, background
    scores = torch.zeros(1, 4, 4)
    for p, w in enumerate([0, 1, 3, 3]):  # the owl patch says "sky": a miss
        scores[0, p, w] = 1.0
    result = readout(scores, words, {"animal": labels}, {"animal": ["cat", "dog", "owl"]}, k=1)
    assert result.num_patches == 3 and result.accuracy == pytest.approx(2 / 3)
    assert math.isclose(result.chance_uniform, uniform_chance(4, 1, num_targets=1)) and result.chance_uniform == 0.25
    assert result.top_words == [[["cat", "dog"], ["sky", "sky"]]]


def test_images_without_patch_labels_get_a_note_not_a_bare_nan() -> None:
    """A corpus without per-patch label maps: the top-word picture is still drawn, the scores are NaN (no logger
    plots them) and a sentence says why, for `genlip eval`'s lines, report.md and the callback's closing line."""
    from helpers import tiny_objective

    from genlip_lit.callbacks.evaluation import _headline
    from genlip_lit.eval.data import EvalBatch, EvalView, Vocabulary
    from genlip_lit.eval.evaluations import readout_evaluation

    class Unlabelled(EvalView):
        def _batches(self, split, batch_size):
            yield EvalBatch(torch.randn(4, 3, 32, 32))

    view = Unlabelled(Vocabulary(words=["red", "blue", "circle", "square"]))
    result = readout_evaluation(tiny_objective(seed=0).eval(), view, budget=4, grid_images=2)
    assert math.isnan(result.scalars["readout/accuracy"]) and "readout/top_word_per_patch" in result.images
    assert "no per-patch labels" in result.details["note"]
    assert _headline(result, ("readout/accuracy",)) == result.details["note"]
