"""Presets and config validation."""

import pytest
import torch

from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIP, GenLIPConfig


@pytest.mark.parametrize("name,target", [("l16", 0.3e9), ("so16", 0.4e9), ("g16", 1.1e9)])
def test_paper_presets_parameter_counts(name, target):
    """Paper Table 1 sizes. Counted: the vision encoder (patch embed, blocks, final norm) WITHOUT the text
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
    assert so.head_dim == 72 and so.mrope_section == (12, 12, 12)
    l16 = GenLIPConfig.from_name("l16")
    assert l16.head_dim == 64 and l16.mrope_section == (8, 12, 12)


def test_unknown_preset_and_key_are_clear_errors():
    with pytest.raises(GenLIPUserError, match="unknown GenLIP preset 'huge'"):
        GenLIPConfig.from_name("huge")
    with pytest.raises(GenLIPUserError, match="depht"):
        GenLIPConfig.from_name("tiny", depht=3)
    with pytest.raises(GenLIPUserError, match="mrope_section"):
        GenLIPConfig.from_name("tiny", mrope_section=(1, 2, 3))
