"""Attention-sink masses: per-row bookkeeping on hand-made and real attention maps."""

from __future__ import annotations

import math
from functools import partial

import torch

from genlip_lit.eval.sink import SinkMasses, sink_masses, sink_plot

close = partial(math.isclose, abs_tol=1e-6)  # float32 maps vs python decimals


def test_hand_made_rows() -> None:
    # 1 layer, 1 head, 3 image tokens + 2 text tokens; every row sums to 1
    w = torch.tensor([[[[1.0, 0, 0, 0, 0],
                        [0.5, 0.5, 0, 0, 0],
                        [0.0, 0, 1.0, 0, 0],
                        [0.2, 0.2, 0.2, 0.4, 0],
                        [0.6, 0.0, 0.0, 0.2, 0.2]]]])
    m = sink_masses([w], num_prefix=3)
    assert close(m.vision_to_first[0], (1 + 0.5 + 0) / 3)
    assert close(m.text_to_first[0], (0.2 + 0.6) / 2)
    assert close(m.text_to_vision[0], (0.6 + 0.6) / 2)
    assert close(m.text_to_vision[0] + m.text_to_text[0], 1.0)
    # padded text rows are left out of the text averages
    m = sink_masses([w], num_prefix=3, text_mask=torch.tensor([[True, False]]))
    assert close(m.text_to_first[0], 0.2) and close(m.text_to_vision[0], 0.6)
    # no text: text masses are NaN, not 0
    assert math.isnan(sink_masses([w[..., :3, :3]], num_prefix=3).text_to_first[0])


def test_real_maps_from_a_tiny_genlip() -> None:
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.modules import GenLIPModule

    torch.manual_seed(0)
    m = GenLIPModule(arch="tiny", arch_overrides={"depth": 3, "width": 32, "ffn_hidden": 64},
                     tokenizer=OpenCLIPTokenizer(compact_corpus="synthetic")).eval()
    ids = torch.tensor([m.caption_encoder.encode("a small red circle")[0]] * 2)
    maps, num_prefix = m.attention_maps(torch.randn(2, 3, 32, 32), ids)
    masses = sink_masses(maps, num_prefix)
    assert len(masses.vision_to_first) == 3
    for tv, tt in zip(masses.text_to_vision, masses.text_to_text):
        assert math.isclose(tv + tt, 1.0, abs_tol=1e-5)  # a text row is split between image and earlier text
    assert all(0.0 <= v <= 1.0 for v in masses.vision_to_first + masses.text_to_first)


def test_plot_is_an_rgb_image() -> None:
    img = sink_plot(SinkMasses([0.5, 0.1], [0.3, 0.2], [0.6, 0.7], [0.4, 0.3]))
    assert img.dtype.name == "uint8" and img.ndim == 3 and img.shape[2] == 3
    assert (img != 255).any()  # something was drawn
