"""A new evaluation is this file and nothing else: one function and its registration. tests/eval/test_registry.py
imports it and sees the evaluation run as a training callback, in `genlip eval` and as a column of `genlip
compare`'s table, and pass the contract every evaluation passes on every objective."""

from __future__ import annotations

from typing import Any

import torch

from genlip_lit.eval.registry import Metric, evaluation
from genlip_lit.eval.result import EvalResult, skipped


@evaluation("brightness", title="brightness", metrics=[
    Metric("pixel_mean", column="mean pixel", kind="num", curve="mean pixel"),
    Metric("feature_norm", column="feature norm", kind="num")])
@torch.no_grad()
def brightness_evaluation(module: Any, view: Any, *, budget: int = 8, batch_size: int = 8, scale: float = 1.0
                          ) -> EvalResult:
    """Mean normalized pixel of the first held-out images (times `scale`), and the mean norm of their pooled
    features: one figure that only the data decides, one that the weights decide.

    Args:
        budget: held-out images read
        batch_size: images per forward pass
        scale: multiplies the pixel mean (an option of its own, to see options reach the function)
    """
    pixels, norms = [], []
    for batch in view.batches("val", budget, batch_size):
        pixels.append(batch.pixel_values.float().cpu())
        norms.append(module.encode_pooled(batch.pixel_values).float().norm(dim=-1).cpu())
    if not pixels:
        return skipped(f"{view}: no held-out images")
    return EvalResult({"brightness/pixel_mean": scale * float(torch.cat(pixels).mean()),
                       "brightness/feature_norm": float(torch.cat(norms).mean())},
                      details={"num_images": sum(len(p) for p in pixels)})
