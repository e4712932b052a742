"""Zero-shot classification: template marginalisation and top-1 through the encoder contract."""

from __future__ import annotations

import torch

from genlip_lit.data.synthetic import zero_shot_templates
from genlip_lit.eval.zero_shot import zero_shot_accuracy, zero_shot_logits


class _Stub:
    """Scores a text 0 when it names the image's class (stored in pixel [0, 0, 0]), else -5."""

    is_generative = True

    def __init__(self, names):
        self.names = names

    def text_match_scores(self, pixel_values, texts):
        truth = [self.names[int(v)] for v in pixel_values[:, 0, 0, 0]]
        return torch.tensor([[0.0 if t.endswith(" " + name) else -5.0 for t in texts] for name in truth])


def test_logits_marginalise_templates_and_pick_the_class() -> None:
    names = ["circle", "square", "star"]
    px = torch.zeros(3, 3, 4, 4)
    px[:, 0, 0, 0] = torch.tensor([2.0, 0.0, 1.0])
    templates = ["a {}", "a big {}"]
    logits = zero_shot_logits(_Stub(names), px, names, templates)
    assert logits.shape == (3, 3) and logits.argmax(-1).tolist() == [2, 0, 1]
    assert torch.isclose(logits[0, 2], torch.logsumexp(torch.zeros(2), 0))
    acc, n = zero_shot_accuracy(_Stub(names), [(px, torch.tensor([2, 0, -1]))], names, templates)
    assert (acc, n) == (1.0, 2)  # label -1 (unknown) is not counted


def test_embedded_templates_cover_sizes_and_colours() -> None:
    templates = zero_shot_templates()  # what a view of the embedded scenes hands the zero-shot evaluation
    assert len(templates) == 12 and all("{}" in t for t in templates)
    assert "a large red {}" in templates


def test_a_figure_below_chance_gets_a_note_naming_class_names_the_captions_do_not_use() -> None:
    from genlip_lit.eval.evaluations import below_chance_note

    words = ["a", "red", "circle", "square", "digit"]
    note = below_chance_note(0.05, 500, ["circle", "Hexagonal nut", "sprocket", "square"], words)
    assert note.startswith("below chance (5.0% vs 25.0%)") and "2 of the 4 class names are not caption words" in note
    assert "Hexagonal nut" in note
    assert below_chance_note(0.20, 500, ["circle", "a", "b", "square"], words) is not None  # 2.6 SE below: not noise
    assert below_chance_note(0.24, 500, ["circle", "a", "b", "square"], words) is None  # within noise
    assert below_chance_note(0.60, 500, ["circle", "square"], words) is None
    assert "may be words the captions rarely use" in below_chance_note(0.05, 500, ["circle", "square"], None)
