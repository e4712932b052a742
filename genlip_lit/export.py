"""The trained vision encoder out of a Lightning checkpoint, in a portable form, and its loader.

    genlip export --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --output encoders/quickstart
    python -c "import genlip_lit; enc = genlip_lit.load_vision_encoder('encoders/quickstart'); print(enc)"

The export is the image tower only (patch embedding, registers, blocks, final norm: no token embedding, no LM
head, no text decoder or text tower) as `model.safetensors`, and `config.json` with the architecture and the
preprocessing the encoder was trained with (patch size, image size, mean/std). `load_vision_encoder` rebuilds it
as a plain torch module mapping normalized images [B, 3, H, W] (any H, W divisible by the patch size: M-RoPE
places the grid) to the final-norm patch features [B, H/p * W/p, width] an MLLM consumes; no Lightning needed.
GenLIP, the encoder-decoder captioner and the contrastive baselines (GenLIP tower) export the same way.
Beside them: `timm/` (the same encoder as a timm NaFlexVit, convert/timm.py; left out, with the reason, for the
ablations timm cannot express exactly) and a model card, `README.md` (model_card.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

import torch
from torch import Tensor, nn

from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.config import GenLIPConfig
from genlip_lit.models.transformer import GenLIP, image_tower

FORMAT = "genlip_vision_encoder"
FORMAT_VERSION = 1
# implementation switches that must not travel with an exported encoder
RUNTIME_FIELDS = {"loss_chunk_tokens": 0, "grad_checkpointing": False, "compile_blocks": False, "drop_path": 0.0}


class VisionEncoder(nn.Module):
    """A GenLIP image tower: normalized pixels -> final-norm patch features (registers dropped)."""

    def __init__(self, config: GenLIPConfig, preprocessing: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.preprocessing = dict(preprocessing)
        self.tower = image_tower(config)

    def forward(self, pixel_values: Tensor) -> Tensor:
        p = self.config.patch_size
        if pixel_values.dim() != 4 or pixel_values.shape[-2] % p or pixel_values.shape[-1] % p:
            raise ValueError(f"expected [B, 3, H, W] with H and W divisible by the patch size {p}, "
                             f"got {tuple(pixel_values.shape)}")
        return self.tower.forward_features(pixel_values).hidden[:, self.config.num_registers :]

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, columns) of an image of this size: features come in raster order over it."""
        return height // self.config.patch_size, width // self.config.patch_size


def vision_tower_of(module: Any) -> GenLIP:
    """The image tower inside a trained genlip module, whatever its objective."""
    from genlip_lit.modules import CaptionerModule, ContrastiveModule, GenLIPModule

    if isinstance(module, CaptionerModule):
        return module.model.encoder
    if isinstance(module, GenLIPModule):
        return module.model
    if isinstance(module, ContrastiveModule):
        if module.clip is not None:
            raise GenLIPUserError("this checkpoint holds an open_clip model: export it with open_clip's own tools")
        return module.visual
    raise GenLIPUserError(f"cannot export the vision encoder of {type(module).__name__}")


def export_vision_encoder(ckpt: str, output: str) -> str:
    """Write DIR/model.safetensors and DIR/config.json; returns the directory."""
    from safetensors.torch import save_file

    from genlip_lit.modules.loading import load_checkpoint

    module, data_hparams = load_checkpoint(ckpt)
    tower = vision_tower_of(module)
    config = dataclasses.replace(tower.cfg, **RUNTIME_FIELDS)
    reference = image_tower(config)  # exactly the parameters the loader will expect
    state = {k: v.detach().contiguous() for k, v in tower.state_dict().items() if k in reference.state_dict()}
    missing = sorted(set(reference.state_dict()) - set(state))
    if missing:
        raise GenLIPUserError(f"{ckpt}: the image tower lacks {missing[:5]}")
    preprocessing = {
        "patch_size": config.patch_size,
        "image_size": int(data_hparams.get("image_size", 224)),
        "mean": list(data_hparams.get("mean", (0.5, 0.5, 0.5))),
        "std": list(data_hparams.get("std", (0.5, 0.5, 0.5))),
        "resolution": "fixed" if config.pos_embed == "learned" else "any multiple of patch_size (M-RoPE)",
        "max_grid": config.max_grid if config.pos_embed == "learned" else None,
    }
    os.makedirs(output, exist_ok=True)
    save_file(state, os.path.join(output, "model.safetensors"))
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "preprocessing": preprocessing,
        "features": "final-norm patch features in raster order, registers dropped: [B, rows*cols, width]",
        "source": {"checkpoint": os.path.abspath(ckpt), "module": type(module).__name__,
                   "objective": module.objective_name},
    }
    from genlip_lit.convert.timm import timm_incompatibility, write_timm_form
    from genlip_lit.model_card import write_model_card

    timm_note = timm_incompatibility(config)
    description["timm"] = {"directory": "timm", "note": "timm.create_model('local-dir:DIR/timm', pretrained=True)"
                           } if timm_note is None else {"directory": None, "note": f"not expressible: {timm_note}"}
    with open(os.path.join(output, "config.json"), "w") as f:
        json.dump(description, f, indent=1)
    if timm_note is None:
        write_timm_form(os.path.join(output, "timm"), state, config, preprocessing)
    write_model_card(output, description, sum(t.numel() for t in state.values()), ckpt, timm_note)
    return output


def load_vision_encoder(path: str, device: str | torch.device = "cpu") -> VisionEncoder:
    """The exported encoder in eval mode; a wrong or incomplete directory raises an error naming it."""
    from safetensors.torch import load_file

    config_path, weights_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for needed in (config_path, weights_path):
        if not os.path.isfile(needed):
            raise GenLIPUserError(f"{path} is not an exported genlip vision encoder: {os.path.basename(needed)} missing")
    with open(config_path) as f:
        try:
            description = json.load(f)
        except json.JSONDecodeError as err:
            raise GenLIPUserError(f"{config_path} is not valid JSON ({err})") from None
    if description.get("format") != FORMAT:
        raise GenLIPUserError(f"{config_path} describes {description.get('format')!r}, not a {FORMAT}")
    if description.get("format_version", 0) > FORMAT_VERSION:
        raise GenLIPUserError(f"{config_path} has format version {description['format_version']}; this genlip_lit "
                              f"reads up to {FORMAT_VERSION}")
    fields = {f.name for f in dataclasses.fields(GenLIPConfig)}
    arch = {k: v for k, v in description.get("architecture", {}).items() if k in fields}
    try:
        config = GenLIPConfig(**arch)
    except (TypeError, GenLIPUserError) as err:
        raise GenLIPUserError(f"{config_path}: incompatible architecture ({err})") from None
    encoder = VisionEncoder(config, description.get("preprocessing", {}))
    try:
        encoder.tower.load_state_dict(load_file(weights_path), strict=True)
    except RuntimeError as err:
        raise GenLIPUserError(f"{weights_path} does not match {config_path}: {str(err).splitlines()[0]}") from None
    return encoder.eval().to(device)


def export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="genlip export", description="Export the vision encoder of a checkpoint.")
    p.add_argument("--ckpt", required=True, help="a checkpoint written by a genlip module (e.g. last.ckpt)")
    p.add_argument("--output", required=True, help="directory for model.safetensors and config.json")
    args = p.parse_args(argv)
    out = export_vision_encoder(args.ckpt, args.output)
    encoder = load_vision_encoder(out)
    n = sum(t.numel() for t in encoder.parameters())
    print(f"wrote {out}/model.safetensors ({n / 1e6:.2f}M parameters), {out}/config.json and {out}/README.md")
    timm_form = json.load(open(os.path.join(out, "config.json")))["timm"]
    print(f"timm form: {out}/timm" if timm_form["directory"] else f"no timm form: {timm_form['note']}")
    return 0
