"""The model card (README.md) `genlip export` writes beside an exported vision encoder.

    genlip export --ckpt CKPT --output DIR     # DIR/README.md

It says what the encoder is (architecture, parameters), how to feed it (preprocessing), what it was trained on
(the data module's settings, or the checkpoint it was imported from), its evaluation figures, and how to load it
with genlip_lit and with timm. Figures come from two places, each named in the card: the newest `genlip eval`
report of this checkpoint (a `report.json` in a folder beside the checkpoint or beside its checkpoints/ folder,
e.g. the default `checkpoints/eval/`, whose recorded weights digest is this checkpoint's), and the last figures
the run's evaluation callbacks logged during fit (kept in the checkpoint's callback states).
"""

from __future__ import annotations

import datetime
import glob
import json
import os
from typing import Any

import torch

from genlip_lit.console.tables import markdown_table, metric_table


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
            "imported": raw.get("genlip_import"), "figures": figures,
            "weights_sha256": raw.get("genlip_weights_sha256"), "report": latest_eval_report(ckpt, raw)}


def report_identity(ckpt: str, raw: dict[str, Any]) -> dict[str, Any]:
    """What `genlip eval` records in report.json about the checkpoint it scored (matched by the model card)."""
    return {"path": os.path.abspath(ckpt), "global_step": raw.get("global_step"),
            "weights_sha256": raw.get("genlip_weights_sha256")}


def latest_eval_report(ckpt: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The newest `genlip eval` report.json of this checkpoint beside it, as {"path", "written", "figures"}.

    A report counts when its recorded weights digest is the checkpoint's; one written before reports recorded
    it counts only at the default place (`eval/` beside the checkpoint) and when newer than the checkpoint.
    """
    folder = os.path.dirname(os.path.abspath(ckpt))
    places = {*glob.glob(os.path.join(folder, "*", "report.json"))}
    if os.path.basename(folder) == "checkpoints":
        places |= set(glob.glob(os.path.join(os.path.dirname(folder), "*", "report.json")))
    digest = raw.get("genlip_weights_sha256")
    found = []
    for path in places:
        try:
            with open(path, encoding="utf-8") as fh:
                report = json.load(fh)
            written = os.path.getmtime(path)
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict) or not isinstance(report.get("evaluations"), dict):
            continue
        recorded = (report.get("checkpoint") or {}).get("weights_sha256")
        default_place = os.path.dirname(path) == os.path.join(folder, "eval")
        if recorded is not None and recorded == digest or (
                recorded is None and default_place and written >= os.path.getmtime(ckpt)):
            found.append((written, path, report))
    if not found:
        return None
    written, path, report = max(found)
    figures = {k: v for entry in report["evaluations"].values() if isinstance(entry, dict)
               for k, v in (entry.get("scalars") or {}).items()
               if not k.endswith("/seconds") and "/layer" not in k}
    return {"path": path, "written": written, "figures": figures}


def figures_source(facts: dict[str, Any], ckpt: str) -> str:
    """One line naming where the card's figures came from (printed by `genlip export`)."""
    parts = []
    report = facts.get("report")
    if report:
        parts.append(f"the genlip eval report {os.path.relpath(report['path'])} ({_when(report['written'])})")
    if facts.get("figures"):
        parts.append(f"the end-of-fit evaluation callbacks (step {facts.get('global_step')})")
    return "model card figures: " + (" and ".join(parts) if parts else
                                     f"none recorded (run `genlip eval --ckpt {ckpt} --config experiments/eval.yaml`"
                                     " before exporting to include them)")


def _when(timestamp: float) -> str:
    return f"{datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


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
             "## Architecture", "", markdown_table(["", ""], rows), "",
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
    lines += ["## Evaluation figures", ""]
    report, figures = facts.get("report"), facts.get("figures") or {}
    if report:
        lines += [f"From `genlip eval` (`{report['path']}`, written {_when(report['written'])}):", "",
                  metric_table(report["figures"]), ""]
    if figures:
        lines += [f"Logged by the run's evaluation callbacks during fit (last figures, step "
                  f"{facts.get('global_step')}):", "", metric_table(figures)]
    if not report and not figures:
        lines.append("None recorded: no `genlip eval` report beside the checkpoint and no evaluation callbacks in "
                     "the run (run `genlip eval --ckpt CKPT --config experiments/eval.yaml`, then export again).")
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
