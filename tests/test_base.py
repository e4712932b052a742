"""Optimizer groups and the warmup + cosine schedule shared by every module."""

import math

import pytest

from genlip_lit.models import GenLIP, GenLIPConfig
from genlip_lit.modules.base import param_groups, warmup_cosine


def test_no_decay_on_norms_biases_embeddings_gates_registers():
    model = GenLIP(GenLIPConfig.from_name("tiny", vocab_size=30, depth=1, num_registers=2))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    for name in exempt:
        assert any(k in name for k in ("norm", "bias", "tok_embed", "gate_proj", "registers", "ls", "gamma")), name
    assert "blocks.0.attn.gate_proj.weight" in exempt
    assert "tok_embed.weight" in exempt and "registers" in exempt
    assert "blocks.0.attn.q_proj.weight" in decayed and "lm_head.weight" in decayed
    assert "patch_embed.weight" in decayed


def test_warmup_then_cosine_to_min():
    total, warm, min_ratio = 100, 10, 0.01
    lrs = [warmup_cosine(s, total, warm, min_ratio) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # linear ramp
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay
    mid = warmup_cosine(55, total, warm, min_ratio)
    assert mid == pytest.approx(min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[100] == pytest.approx(min_ratio) and lrs[104] == pytest.approx(min_ratio)


def test_weight_decay_scope_all_decays_every_parameter():
    """The authors' recipe: AdamW decays everything (no exemptions), for every objective on a GenLIP config."""
    model = GenLIP(GenLIPConfig.from_name("tiny", vocab_size=30, depth=1, num_registers=2))
    decay, no_decay = param_groups(model, 0.01, scope="all")
    assert not no_decay["params"] and len(decay["params"]) == len(list(model.parameters()))
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.modules import CaptionerModule, ContrastiveModule, GenLIPModule

    tok = OpenCLIPTokenizer("synthetic")
    overrides = {"depth": 1, "weight_decay_scope": "all"}
    for cls in (GenLIPModule, CaptionerModule, ContrastiveModule):
        assert cls(arch="tiny", arch_overrides=overrides, tokenizer=tok).weight_decay_scope() == "all"
    assert GenLIPModule(arch="tiny", tokenizer=tok).weight_decay_scope() == "matrices"
