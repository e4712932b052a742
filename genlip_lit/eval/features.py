"""Frozen features for probes: one pass over labelled batches through one or more encoders (and the raw pixels).

    feats, labels = extract_features(module, batches, budget=5000)       # [N, M, D] patches, [N] labels
    patches = layer_patches(module, pixels, -2)                           # the penultimate layer's instead

The pass runs under `torch.no_grad()` with every encoder in eval mode (each submodule gets its own mode back
afterwards) and keeps CPU float32 tensors. Several encoders (an encoder and its random-init twin) and the raw
pixels, average-pooled to the encoder's patch grid, can be collected in the same pass: batch iterators are read
once, so every feature set describes exactly the same images. Plain torch, no Lightning.

Which layer: by default the encoder contract's `encode_patches` (the final LayerNorm's output, what `genlip export`
gives). `layer` picks another hidden state of the GenLIP image tower instead, numbered as Hugging Face's
`hidden_states` (0: patch embeddings, i: the residual stream after block i; negative from the end: -1 the last
block's output, -2 the penultimate, LLaVA's choice), or "mean", the mean over every block's output. In GenLIP the
last block's image-position outputs reach no loss (text tokens read that block's keys and values, computed from
its input), so the final features carry one block of updates the training never shaped.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlip_lit.console.progress import progress
from genlip_lit.errors import GenLIPUserError

DEFAULT_MAX_BYTES = 8 * 2**30  # patch features kept in host memory before extraction refuses


def module_device(module: nn.Module) -> torch.device:
    device = getattr(module, "device", None)  # LightningModule property
    if isinstance(device, torch.device):
        return device
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _mean_pools(module: Any) -> bool:
    """True when `encode_pooled` is (or would be) the mean of `encode_patches`, so it can be derived for free.

    Looked up without importing Lightning: a module that is an EncoderModule has loaded its base already.
    """
    impl = getattr(type(module), "encode_pooled", None)
    if impl is None:
        return True
    base = sys.modules.get("genlip_lit.modules.base")
    return base is not None and impl is base.EncoderModule.encode_pooled


def unpack(batch: Any) -> tuple[Tensor, Tensor]:
    """(pixel_values, labels) from a tuple, a dict, or a `Batch` (uint8 Batches are normalized here)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        pixels, labels = batch
    elif isinstance(batch, Mapping):
        pixels, labels = batch.get("pixel_values"), batch.get("labels", batch.get("label"))
    elif hasattr(batch, "pixel_values"):
        if hasattr(batch, "normalized"):
            batch = batch.normalized()
        pixels, labels = batch.pixel_values, getattr(batch, "labels", None)
    else:
        raise TypeError(f"expected (pixel_values, labels) batches, got {type(batch).__name__}")
    if not isinstance(pixels, Tensor) or not isinstance(labels, Tensor):
        raise ValueError("probe batches need tensor pixel_values [B, 3, H, W] and labels [B]")
    if pixels.dtype == torch.uint8:
        # the probe cannot guess the encoder's mean/std; loaders' Batch objects carry them and are handled above
        raise ValueError("pixel_values are uint8: normalize them (FixedResTransform / Batch.normalized) first")
    if pixels.dim() != 4 or labels.shape != pixels.shape[:1]:
        raise ValueError(f"pixel_values must be [B, 3, H, W] with labels [B], got {tuple(pixels.shape)} / {tuple(labels.shape)}")
    return pixels, labels.long()


class ModeGuard:
    """eval() for the duration, then every submodule back to ITS OWN previous mode (not one flag for all)."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules
        self.modes = [(m, m.training) for module in modules for m in module.modules()]

    def __enter__(self) -> None:
        for module in self.modules:
            module.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, training in self.modes:
            m.training = training


def patch_grid(height: int, width: int, num_patches: int) -> tuple[int, int]:
    """The (rows, cols) patch grid of an image of this size whose encoder gave `num_patches` features."""
    patch = math.sqrt(height * width / max(num_patches, 1))
    grid = (max(1, round(height / patch)), max(1, round(width / patch)))
    if grid[0] * grid[1] != num_patches:  # a non-square patch or an odd encoder: fall back to a square grid
        side = max(1, round(math.sqrt(num_patches)))
        grid = (side, side)
    return grid


def pixel_grid_features(pixels: Tensor, grid: tuple[int, int]) -> Tensor:
    """Raw normalized pixels averaged over each patch of `grid`: [B, 3 * rows * cols], the encoder-free baseline."""
    return F.adaptive_avg_pool2d(pixels.float(), grid).flatten(1)


Layer = int | str | None  # None / "final": encode_patches; an int: hidden_states[i]; "mean": mean over blocks


def check_layer(layer: Layer) -> Layer:
    """`layer` normalised ("final" -> None), or a ValueError naming the accepted values."""
    if layer is None or layer == "final":
        return None
    if layer == "mean" or (isinstance(layer, int) and not isinstance(layer, bool)):
        return layer
    raise ValueError(f"feature layer must be 'final', 'mean' or a hidden-state index (e.g. -2), got {layer!r}")


def layer_patches(module: Any, pixel_values: Tensor, layer: Layer) -> Tensor:
    """Patch features [B, M, D] at `layer` (see the module docstring), registers dropped.

    The hidden states are read with forward hooks on the image tower's blocks (`module.vision_tower()`) while
    `encode_patches` runs, so every module that encodes through its GenLIP tower (GenLIP, the captioner, CLIP and
    SigLIP on the same tower) is served the same way.
    """
    layer = check_layer(layer)
    if layer is None:
        return module.encode_patches(pixel_values)
    tower = module.vision_tower() if callable(getattr(module, "vision_tower", None)) else None
    blocks = getattr(tower, "blocks", None)
    if blocks is None:
        raise GenLIPUserError(f"{type(module).__name__}: feature layer {layer!r} needs a GenLIP image tower "
                              "(blocks); use the final features (layer 'final')")
    depth = len(blocks)
    if layer != "mean" and not -depth - 1 <= layer <= depth:
        raise GenLIPUserError(f"feature layer {layer} is out of range for a {depth}-block tower "
                              f"(0..{depth}, or -{depth + 1}..-1)")
    states: list[Tensor] = []
    hooks = [blocks[0].register_forward_pre_hook(lambda _m, args: states.append(args[0]))]
    hooks += [blk.register_forward_hook(lambda _m, _args, out: states.append(out[0])) for blk in blocks]
    try:
        module.encode_patches(pixel_values)
    finally:
        for h in hooks:
            h.remove()
    if len(states) != depth + 1:
        raise RuntimeError(f"expected {depth + 1} hidden states from the tower, hooks saw {len(states)}")
    hidden = torch.stack(states[1:]).mean(dim=0) if layer == "mean" else states[layer]
    return hidden[:, getattr(tower.cfg, "num_registers", 0):]


@dataclass
class Features:
    """What one encoder gave for the extracted samples (None where not asked for)."""

    patches: Tensor | None  # [N, M, D]
    pooled: Tensor | None  # [N, D]


def _check_bytes(so_far: int, batch: Tensor, max_bytes: int | None) -> None:
    """Refuse once the patch features kept so far outgrow `max_bytes` (host memory), with what to do instead."""
    if max_bytes is None or so_far <= max_bytes:
        return
    raise GenLIPUserError(
        f"patch features passed max_bytes={max_bytes / 2**30:.2f} GiB ({batch.shape[1]} patches x "
        f"{batch.shape[2]} dims per image): lower the budget, raise max_bytes, or extract pooled features "
        "only (pooled=True; linear probe only)"
    )


def extract_many(
    encoders: Mapping[str, Any],
    batches: Iterable[Any],
    device: torch.device | str | None = None,
    budget: int | None = None,
    *,
    want_patches: bool = True,
    want_pooled: bool = True,
    pixels: bool = False,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    description: str = "extracting features",
    layer: Layer = None,
) -> tuple[dict[str, Features], Tensor, Tensor | None]:
    """One pass over `batches` through every encoder: ({name: Features}, labels [N], pixel features or None).

    Samples labelled -1 are dropped; at most `budget` samples are kept, and no batch is pulled once it is reached
    (iterators may decode lazily). With `pixels`, each image is also average-pooled to the first encoder's patch
    grid (`pixel_grid_features`). `max_bytes` bounds the patch features kept, over all encoders. Progress (images
    of `budget`) shows as `description`, a stage of the caller's progress when one is open. `layer`: which hidden
    state (`layer_patches`; pooled = their mean); None, the encoder contract's own features.
    """
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be a positive number of samples or None, got {budget}")
    if not encoders:
        raise ValueError("extract_many needs at least one encoder")
    first = next(iter(encoders.values()))
    device = torch.device(device) if device is not None else module_device(first)
    layer = check_layer(layer)
    derive = {name: layer is not None or _mean_pools(m) for name, m in encoders.items()}
    kept: dict[str, dict[str, list[Tensor]]] = {name: {"patches": [], "pooled": []} for name in encoders}
    labels, pixel_feats = [], []
    count = patch_bytes = 0
    with ModeGuard(*encoders.values()), torch.no_grad(), \
            progress(total=budget, description=description, unit="images") as bar:
        for batch in batches:
            x, y = unpack(batch)
            keep = y >= 0  # -1 = unlabelled: nothing to probe with
            if budget is not None:
                keep &= torch.cumsum(keep.long(), 0) <= budget - count
            if not bool(keep.any()):
                continue
            x, y = x[keep.to(x.device)].to(device, non_blocking=True), y[keep]
            grid = None
            for name, module in encoders.items():
                out = kept[name]
                if want_patches or derive[name] or (pixels and grid is None):
                    p = layer_patches(module, x, layer)
                    grid = grid or patch_grid(x.shape[-2], x.shape[-1], p.shape[1])
                    if want_patches:
                        patch_bytes += p.shape[0] * p.shape[1] * p.shape[2] * 4
                        _check_bytes(patch_bytes, p, max_bytes)
                        out["patches"].append(p.to("cpu", torch.float32))
                    if want_pooled and derive[name]:
                        out["pooled"].append(p.float().mean(dim=1).cpu())
                if want_pooled and not derive[name]:
                    out["pooled"].append(module.encode_pooled(x).to("cpu", torch.float32))
            if pixels:
                pixel_feats.append(pixel_grid_features(x, grid).cpu())
            labels.append(y.cpu())
            count += int(y.shape[0])
            bar.advance(int(y.shape[0]))
            if budget is not None and count >= budget:
                break  # before pulling another batch
    if count == 0:
        raise GenLIPUserError("no labelled samples to extract features from (empty batches, or every label was -1)")
    features = {
        name: Features(torch.cat(out["patches"]) if want_patches else None,
                       torch.cat(out["pooled"]) if want_pooled else None)
        for name, out in kept.items()
    }
    return features, torch.cat(labels), torch.cat(pixel_feats) if pixels else None


def extract_features(
    module: Any,
    batches: Iterable[Any],
    device: torch.device | str | None = None,
    budget: int | None = None,
    *,
    pooled: bool = False,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> tuple[Tensor, Tensor]:
    """Frozen features for up to `budget` labelled samples: (patch features [N, M, D] float32 CPU, labels [N]).

    `batches` yields (pixel_values float [B, 3, H, W] normalized, labels [B]) tuples (dicts and `Batch` objects
    work too); samples labelled -1 are dropped. With `pooled=True` only [N, D] vectors are kept
    (`encode_pooled`), for when N x M x D floats would not fit: `max_bytes` bounds the patch features.
    """
    features, labels, _ = extract_many(
        {"encoder": module}, batches, device, budget, want_patches=not pooled, want_pooled=pooled, max_bytes=max_bytes
    )
    feats = features["encoder"].pooled if pooled else features["encoder"].patches
    assert feats is not None
    return feats, labels
