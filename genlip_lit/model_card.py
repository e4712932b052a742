"""The model card (README.md) `genlip export` writes beside an exported vision encoder.

    genlip export --ckpt CKPT --output DIR     # DIR/README.md

It says what the encoder is (architecture, parameters), how to feed it (preprocessing), what it was trained on
(the data module's settings, or the checkpoint it was imported from), the last figures of each evaluation the
run logged (kept in the checkpoint's callback states), and how to load it with genlip_lit and with timm.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def checkpoint_facts(ckpt: str) -> dict[str, Any]:
    """Step, data settings, import provenance and the last evaluation figures of a checkpoint ({} if unreadable).

    Read with weights_only=True and memory-mapped: only the small entries are touched.
    """
    try:
        raw = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a checkpoint with entries beyond plain data: the card goes without them
        return {}
    figures: dict[str, Any] = {}
    for state in (raw.get("callbacks") or {}).values():
        history = state.get("history") if isinstance(state, dict) else None
        if history:
            figures.update({k: v for k, v in history[-1].items() if not k.endswith("/seconds")})
    return {"global_step": raw.get("global_step"), "data": raw.get("datamodule_hyper_parameters") or {},
            "imported": raw.get("genlip_import"), "figures": figures}


def _data_lines(facts: dict[str, Any]) -> list[str]:
    imported = facts.get("imported")
    if imported:
        return [f"Imported with `genlip import` from the {imported.get('format')} checkpoint "
                f"`{imported.get('source')}`: trained by its authors (see their release for the data)."]
    data = facts.get("data") or {}
    if data.get("synthetic"):
        s = data["synthetic"]
        return [f"genlip_lit's embedded synthetic scenes ({s.get('num_train')} training images of "
                f"{s.get('image_size')} px, seed {s.get('seed')}), captions of their objects."]
    if data.get("data_dir"):
        return [f"Image-caption shards `{data['data_dir']}` (resolution: {data.get('resolution', 'fixed')})."]
    return ["Not recorded in the checkpoint."]


def model_card(description: dict[str, Any], num_params: int, facts: dict[str, Any], timm_note: str | None) -> str:
    """Markdown text of the card for an export's config.json `description`."""
    a, pre = description["architecture"], description["preprocessing"]
    source = description.get("source", {})
    rows = [("layers", a["depth"]), ("width", a["width"]), ("heads x head dim", f"{a['num_heads']} x {a['head_dim']}"),
            ("FFN", f"{a['ffn_hidden']} ({a['ffn_type']})"), ("patch", a["patch_size"]),
            ("positions", f"M-RoPE {a['mrope_layout']} {a['mrope_section']}" if a["pos_embed"] == "mrope"
             else f"learned, grid up to {a['max_grid']}"),
            ("gated attention", a["gated_attn"]), ("registers", a["num_registers"]),
            ("LayerScale init", a["layer_scale_init"]), ("objective", source.get("objective", "GenLIP")),
            ("parameters", f"{num_params / 1e6:.2f}M")]
    lines = ["# GenLIP vision encoder", "",
             "The image tower of a GenLIP model (\"Let ViT Speak\", arXiv 2605.00809) exported by genlip_lit: "
             "normalized pixels in, final-norm patch features out (no [CLS], registers dropped).", "",
             "## Architecture", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
             "## Preprocessing", "",
             f"- resize/crop to {pre.get('image_size')} px as trained (M-RoPE also takes any size divisible by "
             f"{pre.get('patch_size')}, e.g. native aspect ratios)" if a["pos_embed"] == "mrope" else
             f"- {pre.get('image_size')} px (learned positions: grids up to {a['max_grid']} patches a side)",
             f"- pixels / 255, then (x - mean) / std with mean {pre.get('mean')} and std {pre.get('std')}",
             "- features: `[B, rows * cols, width]` in raster order (token `r * cols + c`)", "",
             "## Data", "", *_data_lines(facts), ""]
    step = facts.get("global_step")
    if step is not None and not facts.get("imported"):
        lines += [f"Checkpoint: `{source.get('checkpoint')}` at step {step}.", ""]
    lines += ["## Last evaluation figures", ""]
    figures = facts.get("figures") or {}
    if figures:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in figures.items()]
    else:
        lines.append("None recorded in the checkpoint (run `genlip eval --ckpt CKPT --config experiments/eval.yaml`).")
    lines += ["", "## Loading", "", "```python", "import genlip_lit",
              "encoder = genlip_lit.load_vision_encoder(\"THIS_DIR\")   # torch module, eval mode",
              "features = encoder(pixels)                               # [B, rows * cols, width]", "```", ""]
    if timm_note is None:
        lines += ["With timm (>= 1.0.31), offline, from `timm/` here:", "", "```python", "import timm",
                  "model = timm.create_model(\"local-dir:THIS_DIR/timm\", pretrained=True)",
                  f"features = model.forward_features(pixels)[:, {a['num_registers']}:]   "
                  f"# drop the {a['num_registers']} register token(s)", "```", "",
                  "`NaFlexVit` with `rope_type='mrope'` and `attn_gated`: the same function (tested to 1e-5).", ""]
    else:
        lines += [f"No timm form: timm cannot express {timm_note}.", ""]
    return "\n".join(lines)


def write_model_card(output: str, description: dict[str, Any], num_params: int, ckpt: str,
                     timm_note: str | None) -> str:
    path = os.path.join(output, "README.md")
    with open(path, "w") as f:
        f.write(model_card(description, num_params, checkpoint_facts(ckpt), timm_note))
    return path
