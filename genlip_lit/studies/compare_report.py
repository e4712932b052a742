"""What `genlip compare` reads back from a finished run, and the table and curves it writes.

    python -m pytest tests/studies/test_compare.py -q

A run's numbers come from its own logs (TensorBoard events or a CSVLogger's metrics.csv, read by
console/run_logs.py: the last value of every scalar the evaluation callbacks and the Throughput callback logged,
and the loss curve; a resumed run's repeated steps count once), its saved config (batch
size, devices) and its last checkpoint (parameter counts, objective): nothing is re-evaluated, so the table
shows what training logged. Columns are metric tags (the registered evaluations' `Metric.column`s), so neither a new
objective nor a new evaluation needs a change here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from genlip_lit.console.run_logs import read_scalars
from genlip_lit.console.tables import markdown_table, write_table

LOSS_CURVE = ("train/loss", "train loss (objective-specific scale)")  # the first panel of curves.png


def metric_columns() -> list[tuple[str, str, str]]:
    """(column, scalar tag, format) of the evaluation metrics, from the registry of evaluations (each registration
    names its columns: `Metric.column`); a missing tag shows as "-"."""
    from genlip_lit.eval import evaluations

    return evaluations.metric_columns()


def curve_panels() -> list[tuple[str, str]]:
    """Panels of curves.png: (tag, title): the loss, then the registered metrics that name a curve."""
    from genlip_lit.eval import evaluations

    return [LOSS_CURVE, *evaluations.curve_panels()]


def global_batch_size(config: dict[str, Any]) -> int:
    """Samples per optimizer step from a saved LightningCLI config (batch x devices x nodes x accumulation)."""
    trainer = config.get("trainer") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    devices = trainer.get("devices", 1)
    devices = devices if isinstance(devices, int) and devices > 0 else len(devices) if isinstance(devices, list) else 1
    return int(data.get("batch_size", 1)) * devices * int(trainer.get("num_nodes") or 1) * int(
        trainer.get("accumulate_grad_batches") or 1
    )


def collect_result(name: str, config_path: str, log_dir: Path) -> dict[str, Any]:
    """The numbers of one finished run (JSON-able): final metrics, curves over samples seen, sizes."""
    from genlip_lit.checkpoints.integrity import read_checkpoint
    from genlip_lit.checkpoints.loading import load_checkpoint

    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    batch = global_batch_size(config)
    scalars = read_scalars(log_dir)
    last = log_dir / "checkpoints" / "last.ckpt"
    module, _ = load_checkpoint(str(last))
    steps = int(read_checkpoint(str(last), mmap=True)["global_step"])  # weights_only: nothing in it can run
    return {
        "name": name,
        "config": config_path,
        "objective": module.objective_name,
        "vision_params": module.num_vision_params(),
        "total_params": sum(p.numel() for p in module.parameters()),
        "global_batch": batch,
        "steps": steps,
        "samples_seen": steps * batch,
        "metrics": {tag: series[-1][1] for tag, series in scalars.items()},
        "curves": {tag: [(s * batch, v) for s, v in scalars[tag]] for tag, _ in curve_panels() if tag in scalars},
    }


def _fmt(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%" if kind == "pct" else f"{value:.2f}"


def table_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[list[Any]]]:
    """Header, formatted rows (markdown) and raw rows (csv)."""
    columns = metric_columns()
    header = ["run", "objective", "vision params", "total params", "train GFLOPs/sample", "samples seen",
              "wall time (s)"] + [c for c, _, _ in columns]
    shown, raw = [], []
    for r in results:
        if r.get("status") != "finished":
            shown.append([r["name"], "FAILED"] + ["-"] * (len(header) - 2))
            raw.append([r["name"], "FAILED"] + [""] * (len(header) - 2))
            continue
        m = r["metrics"]
        flops = m.get("perf/train_flops_per_sample")
        shown.append([
            r["name"], r["objective"], f"{r['vision_params'] / 1e6:.2f}M", f"{r['total_params'] / 1e6:.2f}M",
            "-" if flops is None else f"{flops / 1e9:.3f}", f"{r['samples_seen']:,}", f"{r['wall_s']:.0f}",
        ] + [_fmt(m.get(tag), kind) for _, tag, kind in columns])
        raw.append([r["name"], r["objective"], r["vision_params"], r["total_params"],
                    "" if flops is None else flops / 1e9, r["samples_seen"], round(r["wall_s"], 1)]
                   + ["" if m.get(tag) is None else m[tag] for _, tag, _ in columns])
    return header, shown, raw


def curves_image(results: list[dict[str, Any]]) -> np.ndarray:
    from genlip_lit.eval.plots import panels_plot

    finished = [r for r in results if r.get("status") == "finished"]
    panels = []
    for tag, title in curve_panels():
        panels.append((title, {r["name"]: [tuple(p) for p in r["curves"].get(tag, [])] for r in finished}))
    return panels_plot(panels, "samples seen", columns=3)


def write_reports(results: list[dict[str, Any]], output: Path) -> str:
    """DIR/table.md, DIR/table.csv, DIR/curves.png; returns the markdown table."""
    from PIL import Image

    header, shown, raw = table_rows(results)
    table = write_table(output, header, shown, raw)
    Image.fromarray(curves_image(results)).save(output / "curves.png")
    return table


__all__ = ["collect_result", "global_batch_size", "markdown_table", "read_scalars", "write_reports"]
