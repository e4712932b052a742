"""A GenLIP image tower as a timm `NaFlexVit` (timm >= 1.0.31), written so `timm.create_model` loads it offline.

    genlip export --ckpt CKPT --output DIR          # writes DIR/timm/{config.json, model.safetensors}
    python -c "import timm; m = timm.create_model('local-dir:DIR/timm', pretrained=True)"

timm expresses the released GenLIP tower exactly: `rope_type='mrope'` (the authors' interleaved rule, with their
section clamping), `attn_gated` (a sigmoid gate per head channel, its own `gate` Linear), separate q/k/v with
biases (`qkv_fused=False`, so k keeps its bias under RoPE), SwiGLU packed as one fc1 [gate ; up], LayerScale,
register tokens in front of the patches (RoPE leaves them unrotated, as our position (0, 0, 0) does), the final
norm, no pooling or head. Our Conv2d patch embedding becomes timm's Linear over channels-last patches.
Where our model has no bias (open_clip's attention output / FFN) timm's slot gets zeros: the same function.

What timm cannot express, and is refused rather than approximated: learned absolute positions (timm interpolates
a table, ours crop it), the fully causal ablation (patches attending causally), the contiguous (Qwen2-VL)
M-RoPE layout, a head dim other than width / heads, and a LayerNorm eps other than 1e-6.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from genlip_lit.data.transforms import Preprocessing
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.config import GenLIPConfig
from genlip_lit.storage.paths import write_json

ARCHITECTURE = "naflexvit_base_patch16_gap"  # any registered NaFlexVit entrypoint: model_args override it all


def timm_incompatibility(cfg: GenLIPConfig) -> str | None:
    """Why timm cannot compute exactly this tower's function, or None when it can."""
    if cfg.pos_embed != "mrope":
        return "learned absolute positions (timm interpolates its table; ours crops it)"
    if cfg.attn_mode != "prefix":
        return "the fully causal ablation (timm attends bidirectionally among patches)"
    if cfg.mrope_layout != "interleaved":
        return "the contiguous M-RoPE layout (timm's 'mrope' is the interleaved one)"
    if cfg.head_dim * cfg.num_heads != cfg.width:
        return f"head dim {cfg.head_dim} x {cfg.num_heads} heads != width {cfg.width} (timm uses width / heads)"
    if cfg.norm_eps != 1e-6:
        return f"LayerNorm eps {cfg.norm_eps} (timm's NaFlexVit norms use 1e-6)"
    return None


def _mlp_ratio(width: int, hidden: int) -> float:
    """A ratio with int(width * ratio) == hidden (how timm sizes the FFN)."""
    for ratio in (hidden / width, (hidden + 0.5) / width):
        if int(width * ratio) == hidden:
            return ratio
    raise GenLIPUserError(f"no mlp_ratio gives FFN width {hidden} at width {width} in timm")


def timm_model_args(cfg: GenLIPConfig) -> dict[str, Any]:
    """`timm.create_model(ARCHITECTURE, **args)` builds this tower's exact architecture."""
    reason = timm_incompatibility(cfg)
    if reason:
        raise GenLIPUserError(f"timm cannot express this encoder exactly: {reason}")
    return {
        "patch_size": cfg.patch_size, "in_chans": cfg.in_chans, "embed_dim": cfg.width, "depth": cfg.depth,
        "num_heads": cfg.num_heads, "mlp_ratio": _mlp_ratio(cfg.width, cfg.ffn_hidden),
        "swiglu_mlp": cfg.ffn_type == "swiglu", "qkv_fused": False, "qkv_bias": cfg.qkv_bias,
        "attn_gated": cfg.gated_attn, "init_values": cfg.layer_scale_init, "class_token": False,
        "reg_tokens": cfg.num_registers, "pos_embed": "none", "rope_type": "mrope",
        "rope_mrope_section": list(cfg.mrope_section), "rope_temperature": cfg.rope_theta,
        "embed_proj_type": "linear", "global_pool": "", "fc_norm": False, "final_norm": True, "num_classes": 0,
    }


def to_timm_state(state: dict[str, Tensor], cfg: GenLIPConfig) -> dict[str, Tensor]:
    """Image-tower state dict (GenLIP names) -> NaFlexVit state dict."""
    d = cfg.width
    out = {
        "embeds.proj.weight": state["patch_embed.weight"].permute(0, 2, 3, 1).reshape(d, -1),  # (py, px, c) flat
        "embeds.proj.bias": state["patch_embed.bias"],
        "norm.weight": state["norm.weight"], "norm.bias": state["norm.bias"],
    }
    if cfg.num_registers:
        out["embeds.reg_token"] = state["registers"][None]
    for i in range(cfg.depth):
        src, dst = f"blocks.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}norm1.{p}"] = state[f"{src}norm1.{p}"]
            out[f"{dst}norm2.{p}"] = state[f"{src}norm2.{p}"]
        names = [("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj")]
        if cfg.gated_attn:
            names.append(("gate_proj", "gate"))
        for ours, theirs in names:
            out[f"{dst}attn.{theirs}.weight"] = state[f"{src}attn.{ours}.weight"]
            if cfg.qkv_bias:
                out[f"{dst}attn.{theirs}.bias"] = state[f"{src}attn.{ours}.bias"]
        out[f"{dst}attn.proj.weight"] = state[f"{src}attn.o_proj.weight"]
        out[f"{dst}attn.proj.bias"] = state.get(f"{src}attn.o_proj.bias", torch.zeros(d))
        if cfg.layer_scale_init:
            out[f"{dst}gamma_1"] = state[f"{src}ls1.gamma"]
            out[f"{dst}gamma_2"] = state[f"{src}ls2.gamma"]
        f = cfg.ffn_hidden
        if cfg.ffn_type == "swiglu":  # timm's packed SwiGLU: fc1 = [gate ; up], act on the first half
            out[f"{dst}mlp.fc1.weight"] = torch.cat([state[f"{src}mlp.fc1_g.weight"], state[f"{src}mlp.fc1_x.weight"]])
            out[f"{dst}mlp.fc1.bias"] = torch.cat([state.get(f"{src}mlp.fc1_g.bias", torch.zeros(f)),
                                                   state.get(f"{src}mlp.fc1_x.bias", torch.zeros(f))])
        else:
            out[f"{dst}mlp.fc1.weight"] = state[f"{src}mlp.fc1.weight"]
            out[f"{dst}mlp.fc1.bias"] = state.get(f"{src}mlp.fc1.bias", torch.zeros(f))
        out[f"{dst}mlp.fc2.weight"] = state[f"{src}mlp.fc2.weight"]
        out[f"{dst}mlp.fc2.bias"] = state.get(f"{src}mlp.fc2.bias", torch.zeros(d))
    return {k: v.detach().contiguous() for k, v in out.items()}


def write_timm_form(directory: str, state: dict[str, Tensor], cfg: GenLIPConfig, preprocessing: dict[str, Any]
                    ) -> None:
    """DIR/config.json + DIR/model.safetensors for `timm.create_model('local-dir:DIR', pretrained=True)`.

    The timm model is built and loaded strictly here first, so a written directory always loads.
    """
    import timm
    from safetensors.torch import save_file

    args = timm_model_args(cfg)
    weights = to_timm_state(state, cfg)
    model = timm.create_model(ARCHITECTURE, pretrained=False, **args)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:  # a timm release that names things differently
        raise GenLIPUserError(f"timm {timm.__version__} does not take this encoder: {str(err).splitlines()[0]}"
                              ) from None
    pre = Preprocessing.from_hparams(preprocessing)  # missing keys: the training defaults
    config = {
        "architecture": ARCHITECTURE,
        "num_classes": 0,
        "num_features": cfg.width,
        "model_args": {k: v for k, v in args.items() if k != "num_classes"},
        "pretrained_cfg": {
            "tag": "genlip", "custom_load": False, "input_size": [cfg.in_chans, pre.image_size, pre.image_size],
            "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
            "mean": list(pre.mean), "std": list(pre.std),
            "num_classes": 0, "pool_size": None, "first_conv": "embeds.proj", "classifier": "head",
        },
    }
    os.makedirs(directory, exist_ok=True)
    save_file(weights, os.path.join(directory, "model.safetensors"))
    write_json(os.path.join(directory, "config.json"), config, indent=1)
