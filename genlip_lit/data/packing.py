"""Stage-2 sequence packing: variable-size samples (image patches + caption tokens) in rows of <= max_tokens.

    python -m pytest tests/data/test_packing.py -q

A sample is `[registers ; its image's patches (its own grid, raster order) ; BOS prompt caption EOS]`. The packer
takes the samples of one training step (the loader's batch: a bounded window of `batch_size` samples, so the
global batch stays a fixed number of samples as in the paper) and lays them out in as few rows of `max_tokens` as
fit, balancing the rows so the padding after each row is small. It is a pure function of the window, so packing is
deterministic with the loader's seed and a resumed run (litdata restores the sample position) packs the same
rows. Every token carries:

- `segment_ids` [R, T]: 1 + the sample's index in the batch; 0 = padding. Attention stays inside a segment.
- `token_kinds` [R, T]: PAD, REGISTER, PATCH or TEXT. Registers and patches form the sample's bidirectional
  prefix; text attends to them and causally to earlier text of the same sample (models/attention.py: PackedLayout).
- `position_ids` [3, R, T]: each sample's own M-RoPE positions (its grid; its text starting at max(gh, gw)).
- `input_ids` / `loss_mask` / `text_mask` [R, T] as in stage 1, zero/pad elsewhere.

Image patches travel as one uint8 tensor [P, 3, p, p] in placement order (row by row, left to right), which is
the order the model scatters them into PATCH slots; `image_grids` [S, 2] holds each sample's (gh, gw).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from genlip_lit.data.batch import PAD, PATCH, REGISTER, TEXT, Batch, genlip_position_ids
from genlip_lit.data.tokenizer import CaptionEncoder
from genlip_lit.data.transforms import DEFAULT_MEAN, DEFAULT_STD

__all__ = ["PAD", "PATCH", "REGISTER", "TEXT", "PackItem", "PackingCollator", "pack_items", "plan_rows"]


def sample_length(grid: tuple[int, int], num_text: int, num_registers: int = 0) -> int:
    """Tokens one sample occupies in a pack."""
    return num_registers + grid[0] * grid[1] + num_text


def plan_rows(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of the samples in each row: the fewest rows of `max_tokens` found, filled about equally.

    Rows share one padded length (the fullest row), so what matters is the fewest rows AND balanced fills.
    Start from the lower bound ceil(total / max_tokens) rows and place samples longest first into the currently
    emptiest row (LPT scheduling), adding a row while some sample does not fit; then swap or move samples
    between the fullest row and the others while that lowers the fullest fill. Deterministic; within a row
    samples keep their input order.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ValueError(f"sample {i} has {n} tokens, more than max_tokens={max_tokens}: it cannot be packed")
    if not lengths:
        return []
    num_rows = max(1, math.ceil(sum(lengths) / max_tokens))
    while (rows := _lpt(lengths, num_rows, max_tokens)) is None:
        num_rows += 1
    _rebalance(rows, lengths)
    return [sorted(row) for row in rows if row]


def _lpt(lengths: Sequence[int], num_rows: int, max_tokens: int) -> list[list[int]] | None:
    """Longest first into the emptiest row; None when a sample does not fit."""
    rows: list[list[int]] = [[] for _ in range(num_rows)]
    heap = [(0, r) for r in range(num_rows)]  # (fill, row): ties go to the lower row number
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fill, r = heapq.heappop(heap)
        if fill + lengths[i] > max_tokens:
            return None
        rows[r].append(i)
        heapq.heappush(heap, (fill + lengths[i], r))
    return rows


def _rebalance(rows: list[list[int]], lengths: Sequence[int], max_rounds: int = 64) -> None:
    """Lower the fullest row's fill by one move or swap at a time (each strictly lowers the pair's maximum,
    and never raises another row above the old maximum, so capacity holds and the loop ends)."""
    fills = [sum(lengths[i] for i in row) for row in rows]
    for _ in range(max_rounds):
        top = max(range(len(rows)), key=lambda r: (fills[r], -r))
        best: tuple[int, int, int, int | None] | None = None  # (new pair max, other row, item out, item in)
        for other in range(len(rows)):
            if other == top:
                continue
            for a in rows[top]:
                # move a to `other`, or swap it with b from `other`
                for b in [None, *rows[other]]:
                    delta = lengths[a] - (lengths[b] if b is not None else 0)
                    if delta <= 0:
                        continue
                    pair_max = max(fills[top] - delta, fills[other] + delta)
                    if pair_max < fills[top] and (best is None or pair_max < best[0]):
                        best = (pair_max, other, a, b)
        if best is None:
            return
        _, other, a, b = best
        delta = lengths[a] - (lengths[b] if b is not None else 0)
        rows[top].remove(a)
        rows[other].append(a)
        if b is not None:
            rows[other].remove(b)
            rows[top].append(b)
        fills[top] -= delta
        fills[other] += delta


def row_width(rows: Sequence[Sequence[int]], lengths: Sequence[int], max_tokens: int, pad_to_multiple: int) -> int:
    """Padded length of the packed rows: the fullest row, rounded up to `pad_to_multiple` (at most max_tokens)."""
    longest = max((sum(lengths[i] for i in row) for row in rows), default=0)
    return min(max_tokens, -(-longest // pad_to_multiple) * pad_to_multiple)


def image_to_patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[3, gh*p, gw*p] -> [gh*gw, 3, p, p] in raster order (what a stride-p convolution sees at each cell)."""
    c, h, w = pixels.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image of {h}x{w} pixels is not a whole number of {p}-pixel patches")
    gh, gw = h // p, w // p
    return pixels.reshape(c, gh, p, gw, p).permute(1, 3, 0, 2, 4).reshape(gh * gw, c, p, p)


@dataclass
class PackItem:
    """One sample before packing: uint8 pixels [3, gh*p, gw*p], its tokens, and what travels with it."""

    pixels: torch.Tensor
    input_ids: Sequence[int]
    loss_mask: Sequence[bool]
    caption: str = ""
    key: str | None = None
    label: int = -1
    truncated: bool = False
    unknown: int = 0  # caption tokens mapped to the tokenizer's unknown token


@dataclass
class PackingStats:
    useful: int  # non-padding tokens
    total: int  # R * T token slots of the packed batch
    unpacked_total: int  # slots if each sample were padded to the longest sample of the step instead

    @property
    def efficiency(self) -> float:
        return self.useful / max(self.total, 1)

    @property
    def unpacked_efficiency(self) -> float:
        return self.useful / max(self.unpacked_total, 1)


def packing_stats(segment_ids: torch.Tensor) -> PackingStats:
    """Useful tokens vs slots of a packed batch, and vs padding every sample to the longest (no packing)."""
    seg = segment_ids[segment_ids > 0]
    lengths = torch.bincount(seg)[1:]
    lengths = lengths[lengths > 0]
    longest = int(lengths.max()) if lengths.numel() else 0
    return PackingStats(int(seg.numel()), int(segment_ids.numel()), int(lengths.numel()) * longest)


def pack_items(
    items: Sequence[PackItem],
    max_tokens: int,
    patch_size: int,
    num_registers: int,
    pad_id: int,
    pad_to_multiple: int = 8,
) -> Batch:
    """Pack samples into a `Batch` (uint8 patches; see the module docstring for the fields)."""
    grids = [(it.pixels.shape[1] // patch_size, it.pixels.shape[2] // patch_size) for it in items]
    lengths = [sample_length(g, len(it.input_ids), num_registers) for g, it in zip(grids, items)]
    rows = plan_rows(lengths, max_tokens)
    shape = (len(rows), row_width(rows, lengths, max_tokens, pad_to_multiple))
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    loss_mask = torch.zeros(shape, dtype=torch.bool)
    text_mask = torch.zeros(shape, dtype=torch.bool)
    kinds = torch.full(shape, PAD, dtype=torch.int8)
    segments = torch.zeros(shape, dtype=torch.long)
    positions = torch.zeros((3, *shape), dtype=torch.long)
    placed: list[int] = []  # sample indices in placement order
    patches = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            item, (gh, gw) = items[i], grids[i]
            placed.append(i)
            n_text = len(item.input_ids)
            text_at = start + num_registers + gh * gw
            end = text_at + n_text
            segments[r, start:end] = len(placed)
            kinds[r, start : start + num_registers] = REGISTER
            kinds[r, start + num_registers : text_at] = PATCH
            kinds[r, text_at:end] = TEXT
            input_ids[r, text_at:end] = torch.as_tensor(list(item.input_ids), dtype=torch.long)
            loss_mask[r, text_at:end] = torch.as_tensor(list(item.loss_mask), dtype=torch.bool)
            text_mask[r, text_at:end] = True
            positions[:, r, start:end] = genlip_position_ids(gh, gw, n_text, num_registers)
            patches.append(image_to_patches(item.pixels, patch_size))
            start = end
    ordered = [items[i] for i in placed]
    pixel_values = (
        torch.cat(patches) if patches else torch.zeros(0, 3, patch_size, patch_size, dtype=torch.uint8)
    )
    return Batch(
        pixel_values=pixel_values,
        input_ids=input_ids,
        loss_mask=loss_mask,
        text_mask=text_mask,
        labels=torch.tensor([it.label for it in ordered], dtype=torch.long),
        captions=[it.caption for it in ordered],
        keys=[it.key for it in ordered] if all(it.key is not None for it in ordered) else [],
        num_truncated=sum(bool(it.truncated) for it in ordered),
        num_unknown=sum(int(it.unknown) for it in ordered),
        position_ids=positions,
        segment_ids=segments,
        token_kinds=kinds,
        image_grids=torch.tensor([grids[i] for i in placed], dtype=torch.long).reshape(-1, 2),
    )


class PackingCollator:
    """Processed samples (dicts from GenLIPStreamingDataset, None for undecodable ones) -> one packed `Batch`."""

    def __init__(
        self,
        caption_encoder: CaptionEncoder,
        patch_size: int,
        num_registers: int,
        max_tokens: int,
        pad_to_multiple: int = 8,
        mean: tuple[float, float, float] = DEFAULT_MEAN,
        std: tuple[float, float, float] = DEFAULT_STD,
    ) -> None:
        self.caption_encoder = caption_encoder
        self.patch_size, self.num_registers = int(patch_size), int(num_registers)
        self.max_tokens, self.pad_to_multiple = int(max_tokens), int(pad_to_multiple)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, samples: list[dict[str, Any] | None]) -> Batch:
        kept = [s for s in samples if s is not None]
        items = [
            PackItem(
                pixels=s["pixel_values"],
                input_ids=s["input_ids"],
                loss_mask=s["loss_mask"],
                caption=s["caption"],
                key=s.get("key"),
                label=s["label"],
                truncated=bool(s.get("truncated")),
                unknown=int(s.get("unknown") or 0),
            )
            for s in kept
        ]
        batch = pack_items(
            items, self.max_tokens, self.patch_size, self.num_registers,
            self.caption_encoder.tokenizer.pad_id, self.pad_to_multiple,
        )
        batch.num_skipped = len(samples) - len(kept)
        batch.pixel_mean, batch.pixel_std = self.mean, self.std
        return batch
