"""The one batch type that data and models share.

Models may import this module (and only this one) from `genlip_lit.data`; the datamodule builds it, every
LightningModule consumes it. It is a plain (non-frozen) dataclass with a `to()` method, so Lightning's
`move_data_to_device` / `apply_to_collection` move it like any other collection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

# Packed rows: what each token slot holds (Batch.token_kinds). Registers and patches form a sample's prefix.
PAD, REGISTER, PATCH, TEXT = 0, 1, 2, 3


@dataclass
class Batch:
    """A stage-1 (fixed resolution) or packed stage-2 batch.

    Stage 1, text layout per row: BOS, prompt tokens, caption tokens, EOS, then `pad_id` (right padding).
    `loss_mask[b, i]` is True when the token AT position i is a prediction target (caption tokens and EOS),
    so the model's logits at position i - 1 are scored against `input_ids[b, i]`.
    Packed (stage 2, `is_packed`): rows of several samples, each `[registers ; patches ; text]`; the per-token
    fields are [R, T] and described in data/packing.py; `pixel_values` holds every image's patches.
    """

    pixel_values: torch.Tensor  # [B, 3, H, W] (packed: [P, 3, p, p] patches): uint8 from loaders, float normalized
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
    num_unknown: int = 0  # caption tokens in this batch the tokenizer mapped to its unknown token
    position_ids: torch.Tensor | None = None  # packed: M-RoPE ids [3, R, T]
    segment_ids: torch.Tensor | None = None  # packed: [R, T] 1 + sample index, 0 = padding
    token_kinds: torch.Tensor | None = None  # packed: [R, T] int8 PAD/REGISTER/PATCH/TEXT (data/packing.py)
    image_grids: torch.Tensor | None = None  # packed: [S, 2] (gh, gw) per sample, in placement order
    pixel_mean: tuple[float, float, float] | None = None  # normalisation still to apply to uint8 pixel_values
    pixel_std: tuple[float, float, float] | None = None

    @property
    def is_packed(self) -> bool:
        return self.segment_ids is not None

    def normalized(self) -> Batch:
        """The batch with float pixels `(x / 255 - mean) / std`; a no-op when pixels are already float.

        Loaders ship uint8 pixels (4x less to copy between processes and to the GPU) and the datamodule normalizes
        after the transfer to the device; code iterating a loader by hand calls this itself.
        """
        if self.pixel_values.dtype != torch.uint8:
            return self
        if self.pixel_mean is None or self.pixel_std is None:
            raise ValueError("uint8 pixel_values need pixel_mean and pixel_std to be normalized")
        pixels = normalize_pixels(self.pixel_values, self.pixel_mean, self.pixel_std)
        return replace(self, pixel_values=pixels, pixel_mean=None, pixel_std=None)

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
        """Batch size (number of samples, not tokens or packed rows)."""
        if self.image_grids is not None:
            return int(self.image_grids.shape[0])
        if self.input_ids.dim() >= 1:
            return int(self.input_ids.shape[0])
        return 0


def normalize_pixels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 `(x / 255 - mean) / std`, computed as one multiply-add per element."""
    shape = (3, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32, device=pixels.device).view(shape)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32, device=pixels.device).view(shape)
    return pixels.float().mul_(scale).sub_(shift)


def _pin(value: Any) -> Any:
    return value.pin_memory() if isinstance(value, torch.Tensor) else value


# ---------------------------------------------------------------- M-RoPE position layout
def image_position_ids(grid_h: int, grid_w: int, device: torch.device | None = None) -> torch.Tensor:
    """[3, grid_h*grid_w] positions (0, r, c) in raster order."""
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    return torch.stack([torch.zeros_like(rows), rows, cols])


def text_position_ids(start: int, length: int, device: torch.device | None = None) -> torch.Tensor:
    """[3, length] positions start + j on all three axes."""
    return torch.arange(start, start + length, device=device).expand(3, length).clone()


def text_start(grid_h: int, grid_w: int) -> int:
    """First text position: one past the largest vision position id."""
    return max(grid_h, grid_w)


def genlip_position_ids(
    grid_h: int, grid_w: int, text_len: int, num_registers: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """[3, R + M + L] positions for [registers ; patches ; text]. Registers sit at (0, 0, 0)."""
    parts = [
        torch.zeros(3, num_registers, dtype=torch.long, device=device),
        image_position_ids(grid_h, grid_w, device),
        text_position_ids(text_start(grid_h, grid_w), text_len, device),
    ]
    return torch.cat(parts, dim=1)
