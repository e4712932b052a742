"""Multimodal rotary positions (M-RoPE): a (t, h, w) position triple per token.

    python -m pytest tests/models/test_rope.py -q

Image patch at grid row r, column c has position (0, r, c); text token j has s + j on all three axes with
s = max(grid_h, grid_w) (the largest vision position + 1), so on text M-RoPE is exactly 1-D RoPE.
The head_dim/2 frequency channels are assigned to the t, h, w axes by `mrope_section`, either interleaved
(the official GenLIP / Qwen3-VL layout) or in contiguous blocks (the Qwen2-VL layout).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# The position layout is shared with data/packing.py, so it lives with the Batch both sides import.
from genlip_lit.data.batch import genlip_position_ids, image_position_ids, text_position_ids, text_start

__all__ = [
    "MRoPE", "apply_rotary", "genlip_position_ids", "image_position_ids", "mrope_axis_map", "rope_inv_freq",
    "rotate_half", "text_position_ids", "text_start",
]

AXIS_T, AXIS_H, AXIS_W = 0, 1, 2


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> Tensor:
    """inv_freq_i = theta^(-2i/head_dim) for i < head_dim/2 (float32)."""
    return theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim).float()


def mrope_axis_map(head_dim: int, section: tuple[int, int, int], layout: str = "interleaved") -> Tensor:
    """Which axis (0=t, 1=h, 2=w) drives each of the head_dim/2 frequency channels.

    Interleaved is the authors' rule, slice for slice: h takes channels 1, 4, 7, ... below 3*s_h, w takes
    2, 5, 8, ... below 3*s_w, t the rest; s_t is never read, and sections that do not sum to head_dim/2 (L/16's
    (8, 12, 12) at head dim 72) are clamped exactly as there.
    """
    half = head_dim // 2
    s_t, s_h, s_w = section
    axis = torch.full((half,), AXIS_T, dtype=torch.long)
    if layout == "interleaved":
        axis[1 : 3 * s_h : 3] = AXIS_H
        axis[2 : 3 * s_w : 3] = AXIS_W
    elif layout == "contiguous":
        axis[s_t : s_t + s_h] = AXIS_H
        axis[s_t + s_h :] = AXIS_W
    else:
        raise ValueError(f"unknown M-RoPE layout {layout!r}")
    return axis


class MRoPE(nn.Module):
    """Turns position triples into cos/sin tables of shape [..., N, head_dim].

    The frequencies stay float32 whatever the module is cast to (`.to(torch.bfloat16)`, Lightning's
    `bf16-true`): at position ~1200 a bf16 inv_freq puts cos/sin off by up to 1.8.
    """

    def __init__(
        self,
        head_dim: int,
        section: tuple[int, int, int],
        theta: float = 10000.0,
        layout: str = "interleaved",
    ) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta), persistent=False)
        self.register_buffer("axis", mrope_axis_map(head_dim, section, layout), persistent=False)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:  # a dtype cast reached the buffer: recompute it in float32
            self.inv_freq = rope_inv_freq(self.head_dim, self.theta).to(self.inv_freq.device)
        return self

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """position_ids: [3, N] or [3, B, N] -> (cos, sin), each [N, D] or [B, N, D], float32."""
        pos = position_ids.float()
        # Pick, for every frequency channel, the position along that channel's axis: [..., N, D/2].
        per_channel = pos[self.axis].movedim(0, -1)  # [D/2, ..., N] -> [..., N, D/2]
        freqs = per_channel * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, H, N, D]; cos/sin: [N, D] or [B, N, D]. Computed in float32, returned in x's dtype."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
