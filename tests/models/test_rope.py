"""M-RoPE: channel layouts, position ids, reduction to 1-D RoPE, relative-position property."""

import torch

from genlip_lit.models.rope import (
    MRoPE,
    apply_rotary,
    genlip_position_ids,
    mrope_axis_map,
    rope_inv_freq,
    text_start,
)


def test_inv_freq_formula():
    inv = rope_inv_freq(8, 10000.0)
    expected = torch.tensor([10000.0 ** (-2 * i / 8) for i in range(4)])
    torch.testing.assert_close(inv, expected)


def test_interleaved_layout_matches_spec_rule():
    axis = mrope_axis_map(72, (12, 12, 12), "interleaved")
    for i in range(36):
        want = 1 if (i % 3 == 1 and i < 36) else 2 if (i % 3 == 2 and i < 36) else 0
        assert axis[i] == want
    assert torch.bincount(axis).tolist() == [12, 12, 12]
    # head dim 64 with the official (8, 12, 12): channels past 3*12 would be t, but there are only 32.
    axis64 = mrope_axis_map(64, (8, 12, 12), "interleaved")
    assert axis64[:6].tolist() == [0, 1, 2, 0, 1, 2]


def test_contiguous_layout_blocks():
    axis = mrope_axis_map(32, (4, 6, 6), "contiguous")
    assert axis.tolist() == [0] * 4 + [1] * 6 + [2] * 6


def test_position_ids_follow_spec():
    pos = genlip_position_ids(grid_h=2, grid_w=3, text_len=4, num_registers=1)
    assert pos.shape == (3, 1 + 6 + 4)
    assert pos[:, 0].tolist() == [0, 0, 0]  # register
    # patch at row r, column c -> (0, r, c), raster order
    assert pos[:, 1 + 1 * 3 + 2].tolist() == [0, 1, 2]
    assert pos[0, 1:7].eq(0).all()
    s = text_start(2, 3)
    assert s == 3
    assert pos[:, 7:].tolist() == [[3, 4, 5, 6]] * 3


def _plain_rope(x, positions, theta=10000.0):
    """Textbook 1-D RoPE (rotate-half form)."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2).double() / d)
    ang = positions.double()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x.double().chunk(2, -1)
    return x.double() * cos + torch.cat([-x2, x1], -1) * sin


def test_mrope_on_text_is_1d_rope():
    torch.manual_seed(0)
    for layout in ("interleaved", "contiguous"):
        rope = MRoPE(32, (4, 6, 6), layout=layout)
        positions = torch.arange(5, 17)
        cos, sin = rope(positions.expand(3, -1))
        x = torch.randn(1, 2, 12, 32)
        got = apply_rotary(x, cos, sin)
        torch.testing.assert_close(got.double(), _plain_rope(x, positions), atol=1e-5, rtol=1e-5)


def test_score_depends_only_on_per_axis_difference():
    torch.manual_seed(0)
    rope = MRoPE(32, (4, 6, 6), layout="interleaved")
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(pq, pk):
        cq, sq = rope(torch.tensor(pq)[:, None])
        ck, sk = rope(torch.tensor(pk)[:, None])
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    base = score([0, 2, 3], [0, 5, 1])
    for shift in ([3, 0, 0], [0, 4, 0], [0, 0, 7], [2, 1, 9]):
        shifted = score([a + s for a, s in zip([0, 2, 3], shift)], [a + s for a, s in zip([0, 5, 1], shift)])
        assert abs(shifted - base) < 1e-4
    # ...and does depend on the difference along each axis.
    assert abs(score([0, 2, 3], [0, 6, 1]) - base) > 1e-3
    assert abs(score([0, 2, 3], [0, 5, 2]) - base) > 1e-3


def test_rotary_frequencies_stay_fp32_when_the_model_is_cast_to_bf16():
    """`.to(torch.bfloat16)` and Lightning's bf16-true cast every floating buffer; a bf16 inv_freq puts cos/sin
    off by up to 1.85 below position 1300 at So/16's head dim 72 (shown below). The rotary module keeps float32
    frequencies, so the tables of a cast model equal the float32 ones exactly."""
    from lightning.pytorch.plugins.precision import HalfPrecision

    from genlip_lit.models import GenLIP, GenLIPConfig

    positions = torch.arange(0, 1300).expand(3, -1)
    rope = MRoPE(72, (12, 12, 12))
    angles = positions[0, :, None].float() * rope.inv_freq.bfloat16().float()
    assert (torch.cat([angles, angles], -1).cos() - rope(positions)[0]).abs().max() > 1.8  # a cast buffer's error

    def tiny() -> GenLIP:
        return GenLIP(GenLIPConfig.from_name("tiny", vocab_size=20, depth=1, width=144, num_heads=2))  # head dim 72

    cos32, sin32 = tiny().rope(positions)
    for cast in (lambda m: m.to(torch.bfloat16), HalfPrecision("bf16-true").convert_module):
        m = cast(tiny())
        assert m.rope.inv_freq.dtype == torch.float32 and m.blocks[0].attn.q_proj.weight.dtype == torch.bfloat16
        cos, sin = m.rope(positions)
        assert torch.equal(cos, cos32) and torch.equal(sin, sin32)
    assert tiny().to(torch.float64).rope.inv_freq.dtype == torch.float32
