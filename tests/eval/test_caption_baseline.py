"""Caption reports carry a constant-caption baseline: the CIDEr-D of the most frequent training caption given for
every held-out image, next to the model's CIDEr-D (issue 24: the best constant caption reached 0.346 against the
model's 0.458, and nothing said so)."""

from __future__ import annotations

import torch

from genlip_lit.eval.caption_metrics import caption_scores
from genlip_lit.eval.data import EvalBatch, EvalView, Vocabulary
from genlip_lit.eval.evaluations import caption_evaluation, most_frequent_train_caption

TRAIN = ["a red circle", "a blue square", "a red circle", "a green star", "a red circle", "a blue square"]
VAL = ["a red circle", "a blue square", "a green star", "a red star"]


class CaptionView(EvalView):
    def __init__(self) -> None:
        super().__init__(Vocabulary(), "cpu", "")

    def _batches(self, split: str, batch_size: int):
        captions = TRAIN if split == "train" else VAL
        for i in range(0, len(captions), 2):
            yield EvalBatch(torch.zeros(len(captions[i:i + 2]), 3, 8, 8), captions=captions[i:i + 2])


class EchoCaptioner:
    is_generative = True

    def generate_captions(self, pixels, max_new_tokens=None):
        return ["a red circle", "a blue square"][: len(pixels)]


def test_caption_report_carries_the_constant_caption_baseline() -> None:
    view = CaptionView()
    assert most_frequent_train_caption(view) == ("a red circle", 6)
    result = caption_evaluation(EchoCaptioner(), view, budget=4, batch_size=2)
    references = [[c] for c in VAL]
    constant = caption_scores(["a red circle"] * 4, references)["cider"]
    assert result.scalars["captions/cider_constant"] == constant
    assert result.scalars["captions/cider"] == caption_scores(["a red circle", "a blue square"] * 2, references)["cider"]
    assert result.scalars["captions/cider"] > constant  # two right captions beat one caption for all
    assert (f"constant-caption baseline: CIDEr-D {constant:.3f} for 'a red circle' on every image (the most frequent "
            f"of 6 training captions), against the model's {result.scalars['captions/cider']:.3f}"
            ) in result.texts["captions/samples"]
    assert result.details["constant_caption"] == "a red circle"
