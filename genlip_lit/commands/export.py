"""`genlip export`: the vision encoder of a checkpoint as model.safetensors + config.json (`genlip_lit/encoders/export.py`).

    genlip export --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --output encoders/quickstart
    genlip export --ckpt runs/quickstart --output encoders/quickstart     # a run dir: its newest last.ckpt
"""

from __future__ import annotations

import json
import os
from typing import Any

from genlip_lit.commands.common import add_ckpt, add_output, command_parser, parse


def build_parser() -> Any:
    p = command_parser("export", "Export the vision encoder of a checkpoint (image tower only).")
    add_ckpt(p)
    add_output(p, help="directory for model.safetensors, config.json, README.md (model card) and timm/ (timm form)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    from genlip_lit.commands.common import resolve_ckpt
    from genlip_lit.commands.output import check_output, staged_output
    from genlip_lit.console.progress import progress
    from genlip_lit.encoders.export import export_vision_encoder, load_vision_encoder

    check_output(args.output, "export", args.overwrite)  # before the checkpoint is read
    from genlip_lit.checkpoints.loading import load_checkpoint

    ckpt = resolve_ckpt(args.ckpt)
    loaded = load_checkpoint(ckpt)  # a refused checkpoint: its one line, before any progress display
    # written beside --output and moved there only once loaded back: a refusal leaves no partial export
    with staged_output(args.output, "export", args.overwrite) as staging, \
            progress(total=2, description="export", unit="steps") as bar:
        bar.set_postfix("writing the encoder")
        export_vision_encoder(ckpt, staging, loaded)
        bar.advance()
        bar.set_postfix("loading it back (a check)")
        encoder = load_vision_encoder(staging)
        bar.advance()
        bar.set_postfix("")
    out = args.output
    n = sum(t.numel() for t in encoder.parameters())
    print(f"wrote {out}/model.safetensors ({n / 1e6:.2f}M parameters), {out}/config.json and {out}/README.md")
    with open(os.path.join(out, "config.json")) as f:
        timm_form = json.load(f)["timm"]
    print(f"timm form: {out}/timm" if timm_form["directory"] else f"no timm form: {timm_form['note']}")
    from genlip_lit.encoders.model_card import checkpoint_facts, figures_source

    print(figures_source(checkpoint_facts(ckpt), args.ckpt))
    return 0
