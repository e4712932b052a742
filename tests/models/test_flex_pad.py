"""Zero-padded FlexAttention (So/16's head dim 72 where the compiled kernel refuses it) equals the unpadded call."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from genlip_lit.models import flex_pad
from genlip_lit.models.attention import PackedLayout, attend
from genlip_lit.models.flex_pad import flex_any_head_dim, padded_flex, padded_head_dim


def packed_layout() -> PackedLayout:
    segments = torch.tensor([[1] * 20 + [2] * 30 + [0] * 14, [3] * 64])
    prefix = torch.zeros_like(segments, dtype=torch.bool)
    prefix[0, :12], prefix[0, 20:40], prefix[1, :16] = True, True, True
    return PackedLayout(segments, prefix)


def sdpa_as_flex(layout: PackedLayout):
    """An attention with FlexAttention's call signature, differentiable on CPU (flex has no CPU backward)."""
    def call(q, k, v, block_mask=None, scale=None):
        mask = layout.dense_mask(q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return call


def test_padded_head_dims() -> None:
    assert [padded_head_dim(d) for d in (8, 16, 64, 72, 96, 128)] == [16, 16, 64, 128, 128, 128]


def test_padded_flex_equals_flex_and_sdpa_at_head_dim_72() -> None:
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    layout = packed_layout()
    q, k, v = (torch.randn(2, 3, 64, 72) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex says it is not compiled
        plain = flex_attention(q, k, v, block_mask=layout.block_mask())
        padded = padded_flex(flex_attention, q, k, v, block_mask=layout.block_mask())
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-6)
    reference, _ = attend(q, k, v, layout, "mask")
    torch.testing.assert_close(padded, reference, rtol=1e-5, atol=1e-5)


def test_padding_leaves_gradients_exact() -> None:
    torch.manual_seed(0)
    layout = packed_layout()
    inputs = [torch.randn(2, 3, 64, 72, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    flex = sdpa_as_flex(layout)
    grads = []
    for run in (lambda *t: flex(*t), lambda *t: padded_flex(flex, *t)):
        out = run(*inputs)
        grads.append(torch.autograd.grad((out * torch.arange(72.0, dtype=out.dtype)).sum(), inputs))
    for plain, padded in zip(*grads):
        torch.testing.assert_close(padded, plain, rtol=1e-12, atol=1e-12)


def test_a_refused_head_dim_runs_padded_from_then_on(monkeypatch) -> None:
    monkeypatch.setattr(flex_pad, "REFUSED_HEAD_DIMS", set())
    layout = packed_layout()
    calls: list[int] = []
    reference = sdpa_as_flex(layout)

    def picky(q, k, v, **kwargs):
        calls.append(q.shape[-1])
        if q.shape[-1] & (q.shape[-1] - 1):
            raise ValueError("head dim must be a power of two")  # what an older kernel says
        return reference(q, k, v, **kwargs)

    q, k, v = (torch.randn(2, 3, 64, 72) for _ in range(3))
    with pytest.warns(UserWarning, match="refused head dim 72"):
        first = flex_any_head_dim(picky, q, k, v, block_mask=None)
    second = flex_any_head_dim(picky, q, k, v, block_mask=None)
    assert calls == [72, 128, 128]  # tried once, then padded every time
    torch.testing.assert_close(first, reference(q, k, v), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, first)
    with pytest.raises(torch.OutOfMemoryError):  # not a refusal: never hidden by the fallback
        flex_any_head_dim(lambda *a, **kw: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")),
                          torch.randn(1, 1, 4, 40), torch.randn(1, 1, 4, 40), torch.randn(1, 1, 4, 40))
