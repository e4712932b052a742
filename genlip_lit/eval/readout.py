"""Patch-semantics readout: what word does each patch feature "say"?

For GenLIP the LM head is applied to every patch feature (`EncoderModule.patch_word_scores`); a patch is read
correctly when its top-k words contain one of its target words. Targets come from per-patch label maps (the
embedded data keeps a shape and a colour map; `Vocabulary.patch_label_words` names their values), so any data
with label maps works. Two chance levels sit beside the accuracy:

    chance_uniform   top-k drawn at random from the W candidate words: 1 - C(W-T, k) / C(W, k) for T targets
    chance_permuted  the same top-k lists scored against another labelled patch's targets (a fixed permutation):
                     what a readout that knows the image's words but not WHERE they are would get
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ReadoutResult:
    accuracy: float  # labelled patches whose top-k holds one of their target words
    chance_uniform: float
    chance_permuted: float
    num_patches: int  # labelled patches scored
    k: int
    top_words: list[list[list[str]]] = field(default_factory=list)  # [image][row][col] top-1 word, for grids


def uniform_chance(num_words: int, k: int, num_targets: int = 2) -> float:
    """Probability that k distinct words drawn uniformly include at least one of `num_targets` words."""
    if k >= num_words - num_targets + 1:
        return 1.0
    return 1.0 - math.comb(num_words - num_targets, k) / math.comb(num_words, k)


def top_words(scores: Tensor, words: list[str], grid: tuple[int, int]) -> list[list[list[str]]]:
    """The top-1 word of every patch of `scores [B, M, W]`, as [image][row][col] over a (rows, cols) grid."""
    top = scores.float().argmax(-1).reshape(-1, *grid)
    return [[[words[int(i)] for i in row] for row in img] for img in top]


def readout(
    scores: Tensor,
    words: list[str],
    label_maps: dict[str, Tensor],
    label_words: dict[str, list[str]],
    k: int = 5,
    seed: int = 0,
) -> ReadoutResult:
    """Score patch readouts `scores [B, M, W]` (M = rows * cols, raster order) against label maps [B, rows, cols].

    In map `name`, value v > 0 names `label_words[name][v - 1]` (a target word of that patch) and 0 is
    background; a patch with any target is scored, a hit when one of its targets is among its top-k words.
    """
    b, m, w = scores.shape
    if w != len(words):
        raise ValueError(f"scores have {w} words, got {len(words)} names")
    if not label_maps:
        raise ValueError("readout needs at least one label map")
    k = min(k, w)
    grid = tuple(next(iter(label_maps.values())).shape[1:])
    if grid[0] * grid[1] != m:
        raise ValueError(f"label maps are {grid[0]}x{grid[1]} but there are {m} patch scores")
    index = {word: i for i, word in enumerate(words)}
    missing = [x for name in label_maps for x in label_words[name] if x not in index]
    if missing:
        raise ValueError(f"candidate words lack the label words {missing}")
    topk = scores.float().topk(k, dim=-1).indices.cpu()  # [B, M, k]
    flat = {name: lab.reshape(b, m).cpu().long() for name, lab in label_maps.items()}
    labelled = torch.stack([lab > 0 for lab in flat.values()]).any(0)
    n = int(labelled.sum())
    top = topk[labelled]
    # per map: the target word index of each labelled patch (-1 where this map has nothing there)
    targets = [torch.tensor([-1] + [index[x] for x in label_words[name]])[lab[labelled]] for name, lab in flat.items()]

    def hits(order: Tensor) -> Tensor:
        found = torch.zeros(n, dtype=torch.bool)
        for t in targets:
            found |= (top == t[order][:, None]).any(1)
        return found

    identity = torch.arange(n)
    acc = float(hits(identity).float().mean()) if n else float("nan")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if n else identity
    chance_perm = float(hits(perm).float().mean()) if n else float("nan")
    grids = [[[words[int(i)] for i in row] for row in img] for img in topk[..., 0].reshape(b, *grid)]
    return ReadoutResult(acc, uniform_chance(w, k, len(label_maps)), chance_perm, n, k, grids)
