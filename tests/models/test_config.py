"""Presets and config validation."""

import pytest
import torch

from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIP, GenLIPConfig


@pytest.mark.parametrize("name,target", [("l16_paper", 0.3e9), ("so16", 0.4e9), ("g16_paper", 1.1e9)])
def test_paper_presets_parameter_counts(name, target):
    """Paper Table 1 sizes (the released l16 / g16 are checked key for key in test_convert_official.py). Counted: the vision encoder (patch embed, blocks, final norm) WITHOUT the text
    embedding and LM head, and without the gate half of the query projection: the paper's size names match
    the standard ViT trunk; the gate adds depth * (d*d + d) on top (reported, not hidden)."""
    cfg = GenLIPConfig.from_name(name, vocab_size=151936)
    with torch.device("meta"):
        model = GenLIP(cfg)
    trunk = model.num_params(include_text=False, include_gate=False)
    assert abs(trunk - target) / target < 0.10, trunk
    gate = model.num_params(include_text=False) - trunk
    assert gate == cfg.depth * (cfg.attn_dim * cfg.width + cfg.attn_dim)


def test_official_head_dims_and_sections():
    so = GenLIPConfig.from_name("so16")
    assert so.head_dim == 72 and so.mrope_section == (12, 12, 12) and so.text_width == 1152
    l16 = GenLIPConfig.from_name("l16")
    assert (l16.width, l16.head_dim, l16.ffn_hidden, l16.mrope_section) == (1152, 72, 2752, (8, 12, 12))
    assert l16.text_width == 1024 and l16.has_text_bottleneck
    g16 = GenLIPConfig.from_name("g16")
    assert (g16.width, g16.num_heads, g16.head_dim, g16.mrope_section, g16.text_width) == (
        1536, 16, 96, (16, 16, 16), 1024)
    assert GenLIPConfig.from_name("l16_paper").head_dim == 64


def test_mrope_sections_accepted_like_the_authors_code():
    """Interleaved: any three non-negative counts (section[0] is never read, the rest clamp), as in the authors'
    code; contiguous blocks must fill head_dim/2 exactly."""
    assert GenLIPConfig.from_name("tiny", mrope_section=(1, 2, 3)).mrope_section == (1, 2, 3)
    with pytest.raises(GenLIPUserError, match="contiguous"):
        GenLIPConfig.from_name("tiny", mrope_section=(1, 2, 3), mrope_layout="contiguous")
    with pytest.raises(GenLIPUserError, match="non-negative"):
        GenLIPConfig.from_name("tiny", mrope_section=(4, -6, 6))


def test_drop_path_schedules():
    linear = GenLIPConfig.from_name("tiny", drop_path=0.3)
    assert linear.drop_path_rates() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    uniform = GenLIPConfig.from_name("tiny", drop_path=0.3, drop_path_schedule="uniform")
    assert uniform.drop_path_rates() == [0.3] * 4
    with pytest.raises(GenLIPUserError, match="drop_path_schedule"):
        GenLIPConfig.from_name("tiny", drop_path_schedule="cosine")


def test_unknown_preset_and_key_are_clear_errors():
    with pytest.raises(GenLIPUserError, match="unknown GenLIP preset 'huge'"):
        GenLIPConfig.from_name("huge")
    with pytest.raises(GenLIPUserError, match="depht"):
        GenLIPConfig.from_name("tiny", depht=3)
    with pytest.raises(GenLIPUserError, match="mrope_section"):
        GenLIPConfig.from_name("tiny", mrope_section=(1, 2))
