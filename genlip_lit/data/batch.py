"""The one batch type that data and models share.

Models may import this module (and only this one) from `genlip_lit.data`; the datamodule builds it, every
LightningModule consumes it. It is a plain (non-frozen) dataclass with a `to()` method, so Lightning's
`move_data_to_device` / `apply_to_collection` move it like any other collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class Batch:
    """A stage-1 (fixed resolution) or packed stage-2 batch.

    Text layout per row: BOS, prompt tokens, caption tokens, EOS, then `pad_id` (right padding).
    `loss_mask[b, i]` is True when the token AT position i is a prediction target (caption tokens and EOS),
    so the model's logits at position i - 1 are scored against `input_ids[b, i]`.
    """

    pixel_values: torch.Tensor  # [B, 3, H, W] float, normalized
    input_ids: torch.Tensor  # [B, L] long
    loss_mask: torch.Tensor  # [B, L] bool: token at this position is a target (caption + EOS)
    text_mask: torch.Tensor  # [B, L] bool: real (non-pad) token
    labels: torch.Tensor | None = None  # [B] long image class, -1 if unknown
    patch_shape: torch.Tensor | None = None  # [B, gh, gw] long per-patch labels (0 = background)
    patch_color: torch.Tensor | None = None  # [B, gh, gw] long per-patch labels (0 = background)
    captions: list[str] = field(default_factory=list)  # reference captions (raw text)
    keys: list[str] = field(default_factory=list)  # sample keys from the shards (empty if the shards have none)
    num_skipped: int = 0  # samples dropped from this batch because they failed to decode
    num_truncated: int = 0  # captions in this batch cut to the model's max_text_len
    position_ids: torch.Tensor | None = None  # reserved: packed stage-2 M-RoPE ids [3, B, N]
    segment_ids: torch.Tensor | None = None  # reserved: packed stage-2 sample ids

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return a copy with every tensor field on `device` (Lightning calls this through `move_data_to_device`)."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=non_blocking)
            moved[f.name] = value
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """Page-locked copy for faster host-to-GPU copies (DataLoader `pin_memory=True` calls this)."""
        return Batch(**{f.name: _pin(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        """Batch size (number of samples, not tokens)."""
        if self.input_ids.dim() >= 1:
            return int(self.input_ids.shape[0])
        return 0


def _pin(value: Any) -> Any:
    return value.pin_memory() if isinstance(value, torch.Tensor) else value
