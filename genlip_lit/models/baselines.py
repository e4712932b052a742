"""open_clip models from local files only, for users who have CLIP / SigLIP weights of their own.

    python -c "from genlip_lit.models.baselines import load_open_clip; print(load_open_clip('ViT-S-16', None))"

`ContrastiveModule` normally trains its baselines from scratch on GenLIP's own image tower (matched
architectures). With `open_clip_model` it instead holds an open_clip model: a built-in architecture name
(random init unless `weights` names a local checkpoint file) or a path to an open_clip model-config JSON (for
architectures open_clip does not ship). Nothing is ever downloaded: pretrained tags and `hf-hub:` names are
refused with an error that says what to pass instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from genlip_lit.errors import GenLIPUserError


def load_open_clip(model: str, weights: str | None) -> nn.Module:
    """An open_clip CLIP/CustomTextCLIP whose vision tower also returns its patch tokens."""
    import open_clip

    if model.startswith("hf-hub:"):
        raise GenLIPUserError(
            f"open_clip_model {model!r} would download from the Hugging Face hub; download it yourself and pass "
            "its architecture name (or config JSON) with open_clip_weights: PATH_TO_CHECKPOINT"
        )
    if model.endswith(".json"):
        if not os.path.isfile(model):
            raise GenLIPUserError(f"open_clip model config not found: {model}")
        open_clip.add_model_config(model)  # registers it under the file's stem
        model = Path(model).stem
    if model not in open_clip.list_models():
        raise GenLIPUserError(
            f"unknown open_clip architecture {model!r}; use one of open_clip.list_models() or a config JSON path"
        )
    if weights is not None and not os.path.isfile(weights):
        raise GenLIPUserError(
            f"open_clip_weights must be a local checkpoint file (nothing is downloaded); not found: {weights}"
        )
    clip = open_clip.create_model(model, pretrained=weights, pretrained_image=False, pretrained_text=False,
                                  require_pretrained=weights is not None)
    visual = clip.visual
    if not hasattr(visual, "output_tokens"):
        raise GenLIPUserError(f"the image tower of {model!r} ({type(visual).__name__}) does not expose patch tokens")
    visual.output_tokens = True  # visual(x) -> (pooled and projected, patch tokens after the final norm)
    return clip
