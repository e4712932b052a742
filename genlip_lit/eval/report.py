"""An evaluation report on disk: `report.json`, `report.md` and the figures as PNG files (`genlip eval`).

    report = run_evaluations(module, evaluations, view, "runs/quickstart/version_0/checkpoints/eval")

`evaluations` are objects with a `name` and `evaluate(module, view) -> EvalResult` (the evaluation callbacks
are such objects, so `genlip eval` reuses a fit config's callback list as is). NaN scalars ("does not apply")
become null in JSON.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from genlip_lit.console.progress import progress
from genlip_lit.console.tables import metric_table
from genlip_lit.eval.data import EvalView
from genlip_lit.eval.result import held_out_note
from genlip_lit.storage.paths import nan_to_null, write_json


def slug(tag: str) -> str:
    """A tag as a file name: runs of other characters become one underscore."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def run_evaluations(module: Any, evaluations: Sequence[Any], view: EvalView, output: str,
                    about: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run each evaluation once (no grad, eval mode as the module is), write the reports; returns report.json.
    `about`: entries put first in report.json (`genlip eval`: the checkpoint scored, which the model card matches)."""
    os.makedirs(output, exist_ok=True)
    report: dict[str, Any] = {**(about or {}), "evaluations": {}}
    md = ["# genlip eval report", ""]
    with progress(total=len(evaluations), description="eval", unit="evaluations") as run:
        for ev in evaluations:
            run.set_postfix(f"now {ev.name}")
            md += _run_one(module, ev, view, output, report)
            run.advance()
        run.set_postfix("")
    write_json(os.path.join(output, "report.json"), report)
    with open(os.path.join(output, "report.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(md))
    return report


def _run_one(module: Any, ev: Any, view: EvalView, output: str, report: dict[str, Any]) -> list[str]:
    """Run one evaluation, save its images, add it to `report`; returns its report.md lines."""
    md: list[str] = []
    start = time.perf_counter()
    with torch.no_grad():
        result = ev.evaluate(module, view)
    result.scalars[f"{ev.name}/seconds"] = time.perf_counter() - start
    images = {}
    for tag, image in result.images.items():
        name = f"{slug(tag)}.png"
        Image.fromarray(image).save(os.path.join(output, name))
        images[tag] = name
    note = held_out_note(result.details)
    report["evaluations"][ev.name] = {
        "class": type(ev).__name__,
        "scalars": nan_to_null(result.scalars),
        "images": images,
        "details": result.details,
        **({"held_out": note} if note else {}),
    }
    md += [f"## {type(ev).__name__}", ""] + ([f"Scored {note}.", ""] if note else [])
    shown = {k: v for k, v in result.scalars.items() if not k.startswith("sink/") or k.endswith("_mean")}
    md.append(metric_table(shown))
    md.append("")
    if "note" in result.details:
        md += [f"Note: {result.details['note']}.", ""]
    md += [f"![{tag}]({name})" for tag, name in images.items()]
    for tag, text in result.texts.items():
        md += ["", f"**{tag}**", "", text]
    if "skipped" in result.details:
        md += ["", f"skipped: {result.details['skipped']}"]
    md.append("")
    return md
