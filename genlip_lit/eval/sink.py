"""Attention-sink masses per layer (the paper's Figure 3): how much attention lands on the first token.

For a sequence `[registers ; patches ; text]` and one layer's attention weights `w[b, h, q, k]` (rows sum to 1):

    vision_to_first  mean over image-token queries of w[q, 0]
    text_to_first    mean over (real) text-token queries of w[q, 0]
    text_to_vision   mean over text-token queries of sum over image keys of w[q, k]
    text_to_text     the rest of a text row: 1 - text_to_vision (checked, not assumed)

averaged over heads and the batch. Without a gate, ViT-style trunks pile mass on the first token (a "sink");
GenLIP's sigmoid gate on each head's output is meant to remove the need for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class SinkMasses:
    """Per-layer masses (lists of floats, one per layer)."""

    vision_to_first: list[float]
    text_to_first: list[float]
    text_to_vision: list[float]
    text_to_text: list[float]

    def as_dict(self) -> dict[str, list[float]]:
        return {
            "vision_to_first": self.vision_to_first,
            "text_to_first": self.text_to_first,
            "text_to_vision": self.text_to_vision,
            "text_to_text": self.text_to_text,
        }


def sink_masses(weights: list[Tensor], num_prefix: int, text_mask: Tensor | None = None) -> SinkMasses:
    """Masses from per-layer attention weights `[B, H, N, N]`; the first `num_prefix` tokens are the image's.

    `text_mask [B, L]` marks real text tokens (padding rows are left out of the text averages).
    """
    out = SinkMasses([], [], [], [])
    for w in weights:
        w = w.float()
        b, _, n, _ = w.shape
        n_text = n - num_prefix
        to_first = w[..., 0].mean(1)  # [B, N], averaged over heads
        out.vision_to_first.append(float(to_first[:, :num_prefix].mean()))
        if n_text == 0:
            for values in (out.text_to_first, out.text_to_vision, out.text_to_text):
                values.append(float("nan"))
            continue
        mask = torch.ones(b, n_text, dtype=torch.bool, device=w.device) if text_mask is None else text_mask.bool()
        mask = mask.to(w.device)
        denom = mask.sum().clamp(min=1)
        text_rows = w[:, :, num_prefix:, :].mean(1)  # [B, L, N]
        out.text_to_first.append(float((text_rows[..., 0] * mask).sum() / denom))
        to_vision = text_rows[..., :num_prefix].sum(-1)
        to_text = text_rows[..., num_prefix:].sum(-1)
        out.text_to_vision.append(float((to_vision * mask).sum() / denom))
        out.text_to_text.append(float((to_text * mask).sum() / denom))
    return out


def sink_plot(masses: SinkMasses, title: str = "attention mass per layer") -> np.ndarray:
    """The masses per layer on a log percent axis (a 1% mass stays visible beside 90%), an RGB uint8 image."""
    from genlip_lit.eval.plots import line_plot

    series = {k: v for k, v in masses.as_dict().items() if k != "text_to_text"}
    return line_plot(series, title=title, x_label="layer", y_label="attention mass", percent_log=True)
