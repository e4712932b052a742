"""Gated attention: the gate's formula, gate off == plain attention, kernels agree, masks are prefix-LM."""

import pytest
import torch

from genlip_lit.models.attention import AttnLayout, GatedAttention, attend, prefix_lm_mask
from genlip_lit.models.rope import MRoPE, genlip_position_ids


def _reference_attention(q, k, v, mask):
    scores = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.double()).float()


def test_prefix_lm_mask_pattern():
    m = prefix_lm_mask(num_prefix=3, seq_len=6)
    # image rows: all image columns, no text columns
    assert m[:3, :3].all() and not m[:3, 3:].any()
    # text rows: all image columns, causal over text
    assert m[3:, :3].all()
    assert torch.equal(m[3:, 3:], torch.ones(3, 3, dtype=torch.bool).tril())


@pytest.mark.parametrize("num_prefix,q_start,n_q,n_k", [(5, 0, 9, 9), (0, 0, 7, 7), (5, 7, 1, 8), (5, 7, 3, 10), (4, 0, 4, 4)])
def test_kernels_agree(num_prefix, q_start, n_q, n_k):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, n_q, 8), torch.randn(2, 3, n_k, 8), torch.randn(2, 3, n_k, 8)
    layout = AttnLayout(num_prefix, q_start)
    ref = _reference_attention(q, k, v, layout.dense_mask(n_q, n_k))
    for impl in ("auto", "sdpa", "mask", "manual"):
        out, w = attend(q, k, v, layout, impl)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        if impl == "manual":
            torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, n_q))


def _rope(n_prefix_grid=(2, 2), text=3, head_dim=8):
    rope = MRoPE(head_dim, (2, 1, 1))
    return rope(genlip_position_ids(*n_prefix_grid, text))


def test_gate_matches_formula():
    torch.manual_seed(0)
    attn = GatedAttention(width=16, num_heads=2, head_dim=8, gated=True)
    x = torch.randn(2, 7, 16)
    rope = _rope()
    layout = AttnLayout(num_prefix=4)
    out, _ = attn(x, rope, layout)

    # G = sigmoid(X W_g + b_g), one value per head channel; out = o_proj(G * Attn(X)).
    inner = 16
    gate = torch.sigmoid(x @ attn.gate_proj.weight.T + attn.gate_proj.bias)
    from genlip_lit.models.rope import apply_rotary

    def heads(t):
        return t.view(2, 7, 2, 8).transpose(1, 2)

    q = apply_rotary(heads(attn.q_proj(x)), *rope)
    k = apply_rotary(heads(attn.k_proj(x)), *rope)
    v = heads(attn.v_proj(x))
    a = _reference_attention(q, k, v, layout.dense_mask(7, 7)).transpose(1, 2).reshape(2, 7, inner)
    expected = attn.o_proj(gate * a)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert gate.shape == (2, 7, inner)  # elementwise per head channel, not one scalar per head


def test_gate_off_equals_plain_attention():
    """A gate that is identically 1 (sigmoid(100) == 1.0 in fp32) reproduces the gate-off module exactly."""
    torch.manual_seed(0)
    plain = GatedAttention(width=16, num_heads=2, head_dim=8, gated=False)
    gated = GatedAttention(width=16, num_heads=2, head_dim=8, gated=True)
    with torch.no_grad():
        gated.gate_proj.weight.zero_()
        gated.gate_proj.bias.fill_(100.0)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(gated, name).load_state_dict(getattr(plain, name).state_dict())
    x = torch.randn(2, 7, 16)
    layout = AttnLayout(num_prefix=4)
    out_plain, _ = plain(x, _rope(), layout)
    out_gated, _ = gated(x, _rope(), layout)
    assert torch.equal(out_plain, out_gated)
    # and a real gate changes the output
    with torch.no_grad():
        gated.gate_proj.bias.fill_(0.0)
    assert not torch.allclose(gated(x, _rope(), layout)[0], out_plain)


def test_sdpa_path_has_gradients_on_cpu():
    attn = GatedAttention(width=16, num_heads=2, head_dim=8)
    x = torch.randn(2, 7, 16, requires_grad=True)
    out, _ = attn(x, _rope(), AttnLayout(num_prefix=4))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
