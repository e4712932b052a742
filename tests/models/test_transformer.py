"""GenLIP transformer behaviour: prefix-LM information flow, loss on caption tokens only, encoder output."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_genlip

from genlip_lit.models import GenLIP, GenLIPConfig


def _model(**overrides):
    return tiny_genlip(vocab_size=50, depth=2, width=64, num_heads=4, ffn_hidden=96, **overrides)


def _inputs(b=2, size=32, text=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, size, size, generator=g), torch.randint(4, 50, (b, text), generator=g)


@pytest.mark.parametrize("overrides", [{}, {"gated_attn": False}, {"num_registers": 2}, {"pos_embed": "learned"}])
def test_image_outputs_ignore_text(overrides):
    model = _model(**overrides)
    px, ids = _inputs()
    other = ids.clone()
    other[:, 2:] = (other[:, 2:] + 7) % 50
    a = model.forward_features(px, ids)
    b = model.forward_features(px, other)
    p = a.num_prefix
    assert torch.equal(a.hidden[:, :p], b.hidden[:, :p])
    torch.testing.assert_close(a.hidden[:, :p][:, model.cfg.num_registers :], model.encode_image(px))


def test_text_is_causal_but_sees_every_patch():
    model = _model()
    px, ids = _inputs()
    base = model.text_logits(px, ids)
    j = 2
    later = ids.clone()
    later[:, j + 1 :] = (later[:, j + 1 :] + 5) % 50
    changed = model.text_logits(px, later)
    torch.testing.assert_close(changed[:, : j + 1], base[:, : j + 1], atol=0, rtol=0)
    assert not torch.allclose(changed[:, j + 1 :], base[:, j + 1 :])
    # Changing any single patch (first, middle, last) changes every text position's output.
    p = model.cfg.patch_size
    for r, c in [(0, 0), (1, 2), (3, 3)]:
        px2 = px.clone()
        px2[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p] += 1.0
        diff = (model.text_logits(px2, ids) - base).abs().amax(dim=-1)
        assert (diff > 1e-6).all(), (r, c)


def test_fully_causal_ablation_makes_patches_causal():
    model = _model(attn_mode="causal")
    px, ids = _inputs()
    out = model.forward_features(px, ids).hidden
    px2 = px.clone()
    px2[:, :, -8:, -8:] += 1.0  # last patch only
    out2 = model.forward_features(px2, ids).hidden
    m = (px.shape[-1] // 8) ** 2
    torch.testing.assert_close(out2[:, : m - 1], out[:, : m - 1], atol=0, rtol=0)
    assert not torch.allclose(out2[:, m - 1 :], out[:, m - 1 :])


@pytest.mark.parametrize("impl", ["sdpa", "mask", "manual"])
def test_attention_kernels_give_the_same_model(impl):
    model = _model(num_registers=1)
    px, ids = _inputs()
    ref = model.text_logits(px, ids)
    model.set_attn_impl(impl)
    torch.testing.assert_close(model.text_logits(px, ids), ref, atol=1e-5, rtol=1e-5)


def test_loss_counts_only_caption_targets():
    model = _model()
    px, ids = _inputs(text=8)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 3:7] = True  # BOS at 0, prompt at 1-2, caption+EOS at 3-6, pad at 7
    mask[1, 6] = False  # a shorter second caption
    out = model.loss(px, ids, mask)
    logits = model.text_logits(px, ids)
    ref = F.cross_entropy(logits[:, :-1][mask[:, 1:]], ids[:, 1:][mask[:, 1:]])
    torch.testing.assert_close(out.loss, ref)
    assert out.num_tokens.item() == int(mask.sum())
    # Prompt/pad targets may hold anything: changing only tokens that are never targets nor earlier inputs
    # of a target (the trailing pad) leaves the loss unchanged.
    ids2 = ids.clone()
    ids2[:, 7] = 0
    torch.testing.assert_close(model.loss(px, ids2, mask).loss, out.loss)


def test_gradients_reach_patch_embedding_and_gate():
    model = _model().train()
    px, ids = _inputs()
    mask = torch.ones_like(ids, dtype=torch.bool)
    model.loss(px, ids, mask).loss.backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.gate_proj.weight.grad.abs().sum() > 0


def test_encode_image_shape_and_native_grid():
    model = _model(num_registers=4)
    feats = model.encode_image(torch.randn(1, 3, 24, 40))
    assert feats.shape == (1, 3 * 5, 64)


def test_activation_checkpointing_changes_nothing_but_memory():
    # drop path on: the recomputed blocks must replay the same random draws
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = GenLIP(GenLIPConfig.from_name("tiny", depth=2, width=64, ffn_hidden=128, vocab_size=50,
                                              drop_path=0.3, grad_checkpointing=recompute))
        torch.manual_seed(1)
        x, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 7))
        out = model.loss(x, ids, torch.ones(2, 7, dtype=torch.bool))
        out.loss.backward()
        results.append((out.loss.detach(), model.patch_embed.weight.grad, model.blocks[0].attn.gate_proj.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compile_blocks_marks_every_block_for_compilation():
    model = GenLIP(GenLIPConfig.from_name("tiny", depth=2, width=64, ffn_hidden=128, vocab_size=50,
                                          compile_blocks=True))
    assert all(blk._compiled_call_impl is not None for blk in model.blocks)  # compiled lazily, on first call
    assert GenLIP(GenLIPConfig.from_name("tiny", vocab_size=50)).blocks[0]._compiled_call_impl is None


def test_recipe_switches_drop_path_and_xavier_init():
    """drop_path_schedule "uniform": every block drops at the full rate (the authors' code); attn_init "xavier":
    q and gate come from one xavier-uniform [2d, d] draw (the official fused q_proj), k/v/o from [d, d] ones."""
    model = _model(drop_path=0.2, drop_path_schedule="uniform", attn_init="xavier")
    assert [blk.drop_path1.drop_prob for blk in model.blocks] == [0.2, 0.2]
    ramp = _model(drop_path=0.2)
    assert isinstance(ramp.blocks[0].drop_path1, torch.nn.Identity) and ramp.blocks[1].drop_path1.drop_prob == 0.2
    attn, d = model.blocks[0].attn, 64
    fused_bound, square_bound = (6 / (d + 2 * d)) ** 0.5, (6 / (2 * d)) ** 0.5
    for w, bound in ((attn.q_proj.weight, fused_bound), (attn.gate_proj.weight, fused_bound),
                     (attn.k_proj.weight, square_bound), (attn.o_proj.weight, square_bound)):
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # uniform on [-bound, bound]
    assert attn.q_proj.bias.abs().max() == 0
    assert 0.015 < _model().blocks[0].attn.k_proj.weight.std() < 0.025  # default: N(0, 0.02)


def test_text_bottleneck_projects_around_the_blocks():
    model = _model(text_width=32)
    assert model.tok_embed.weight.shape == (50, 32) and model.lm_head.weight.shape == (50, 32)
    assert model.text_in_proj.weight.shape == (64, 32) and model.text_out_proj.weight.shape == (32, 64)
    px, ids = _inputs()
    out = model.forward_features(px, ids)
    logits = model.text_logits(px, ids)
    torch.testing.assert_close(logits, model.lm_head(model.text_out_proj(out.hidden[:, out.num_prefix :])))
    mask = torch.ones_like(ids, dtype=torch.bool)
    loss = model.loss(px, ids, mask).loss
    torch.testing.assert_close(loss, F.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1)))
    # the image tower (what export writes) has no text parts
    from genlip_lit.models.transformer import image_tower

    tower = image_tower(model.cfg)
    assert not any(n.startswith(("tok_embed", "text_", "lm_head")) for n, _ in tower.named_parameters())
