"""Patch-semantics readout: what word does each patch feature "say"?

For GenLIP the LM head is applied to every patch feature (`EncoderModule.patch_word_scores`); a patch is read
correctly when its top-k words contain the colour or the shape word of the object it shows (the embedded data
keeps per-patch label maps). Two chance levels sit beside the accuracy:

    chance_uniform   top-k drawn at random from the W candidate words: 1 - C(W-2, k) / C(W, k)
    chance_permuted  the same top-k lists scored against another object patch's labels (a fixed permutation):
                     what a readout that knows the image's words but not WHERE they are would get
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from genlip_lit.data.synthetic import COLORS, SHAPES

COLOR_NAMES = list(COLORS)


@dataclass
class ReadoutResult:
    accuracy: float  # object patches whose top-k holds their colour or shape word
    chance_uniform: float
    chance_permuted: float
    num_patches: int  # object patches scored
    k: int
    top_words: list[list[list[str]]] = field(default_factory=list)  # [image][row][col] top-1 word, for grids


def uniform_chance(num_words: int, k: int, num_targets: int = 2) -> float:
    """Probability that k distinct words drawn uniformly include at least one of `num_targets` words."""
    if k >= num_words - num_targets + 1:
        return 1.0
    return 1.0 - math.comb(num_words - num_targets, k) / math.comb(num_words, k)


def _hits(topk: Tensor, shape_idx: Tensor, color_idx: Tensor) -> Tensor:
    """[P, k] word indices vs [P] target indices -> [P] bool: either target among the top-k."""
    return (topk == shape_idx[:, None]).any(1) | (topk == color_idx[:, None]).any(1)


def readout(
    scores: Tensor,
    words: list[str],
    patch_shape: Tensor,
    patch_color: Tensor,
    k: int = 5,
    seed: int = 0,
) -> ReadoutResult:
    """Score patch readouts `scores [B, M, W]` (M = gh * gw, raster order) against label maps `[B, gh, gw]`.

    Label value v > 0 names SHAPES[v - 1] / COLOR_NAMES[v - 1]; 0 is background (not scored).
    """
    b, m, w = scores.shape
    if w != len(words):
        raise ValueError(f"scores have {w} words, got {len(words)} names")
    k = min(k, w)
    gh, gw = patch_shape.shape[1:]
    if gh * gw != m:
        raise ValueError(f"label maps are {gh}x{gw} but there are {m} patch scores")
    index = {word: i for i, word in enumerate(words)}
    missing = [x for x in (*SHAPES, *COLOR_NAMES) if x not in index]
    if missing:
        raise ValueError(f"candidate words lack the label words {missing}")
    shape_lut = torch.tensor([-1] + [index[s] for s in SHAPES])
    color_lut = torch.tensor([-1] + [index[c] for c in COLOR_NAMES])
    topk = scores.float().topk(k, dim=-1).indices.cpu()  # [B, M, k]
    shape_l, color_l = patch_shape.reshape(b, m).cpu().long(), patch_color.reshape(b, m).cpu().long()
    on_object = shape_l > 0
    top, s_idx, c_idx = topk[on_object], shape_lut[shape_l[on_object]], color_lut[color_l[on_object]]
    n = int(on_object.sum())
    acc = float(_hits(top, s_idx, c_idx).float().mean()) if n else float("nan")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if n else torch.zeros(0, dtype=torch.long)
    chance_perm = float(_hits(top, s_idx[perm], c_idx[perm]).float().mean()) if n else float("nan")
    top1 = topk[..., 0].reshape(b, gh, gw)
    grids = [[[words[int(i)] for i in row] for row in img] for img in top1]
    return ReadoutResult(acc, uniform_chance(w, k), chance_perm, n, k, grids)
