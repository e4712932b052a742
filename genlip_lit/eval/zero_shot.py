"""Zero-shot classification through the encoder contract's `text_match_scores`.

Each class becomes several texts (prompt templates with a `{}` for the class name; the data view supplies them,
e.g. "a {size} {colour} {}" for the embedded scenes, "a photo of a {}." otherwise). A generative model scores
each text by its log-likelihood as the start of the image's caption, and the class score is the log of the
summed likelihoods over templates (the marginal); a contrastive model scores by embedding similarity and the
class score is the mean over templates.
"""

from __future__ import annotations

import torch
from torch import Tensor


def zero_shot_logits(module, pixel_values: Tensor, class_names: list[str], templates: list[str]) -> Tensor:
    """Class scores [B, C] for a batch of normalized images."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template needs a '{{}}' for the class name, got {templates}")
    texts = [t.format(name) for name in class_names for t in templates]
    scores = module.text_match_scores(pixel_values, texts).float()
    scores = scores.view(pixel_values.shape[0], len(class_names), len(templates))
    if module.is_generative:
        return torch.logsumexp(scores, dim=-1)
    return scores.mean(dim=-1)


def zero_shot_accuracy(module, batches, class_names: list[str], templates: list[str]) -> tuple[float, int]:
    """Top-1 over an iterable of (pixel_values, labels); returns (accuracy, number of images)."""
    correct = total = 0
    for pixels, labels in batches:
        pred = zero_shot_logits(module, pixels, class_names, templates).argmax(-1).cpu()
        keep = labels >= 0
        correct += int((pred[keep] == labels[keep]).sum())
        total += int(keep.sum())
    return (correct / total if total else float("nan")), total
