"""The throughput a previous run measured: `Throughput` callback scalars from TensorBoard events or Lightning CSV.

    genlip plan --config experiments/stage1_corpus.yaml --throughput-log runs/stage1_b16/version_0

Reads perf/mfu, perf/samples_per_s and perf/train_flops_per_sample from the newest event file or metrics.csv
under the run directory. Rates are medians over the logged windows (the first window, which includes warm-up
and compilation, is dropped when there are more), so one slow window does not set the plan.
"""

from __future__ import annotations

import csv
import os
import statistics
from dataclasses import dataclass

from genlip_lit.errors import GenLIPUserError

TAGS = ("perf/mfu", "perf/samples_per_s", "perf/train_flops_per_sample")


@dataclass
class MeasuredThroughput:
    source: str  # the file read
    mfu: float | None
    samples_per_s: float | None  # per GPU (the callback logs each rank's own samples)
    flops_per_sample: float | None
    windows: int  # logged rate windows behind the medians


def _newest(root: str, match) -> str | None:
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.join(folder, f) for f in files if match(f)]
    return max(found, key=os.path.getmtime) if found else None


def _scalars_from_events(path: str) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in TAGS if tag in tags}


def _scalars_from_csv(path: str) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            for tag in TAGS:
                if row.get(tag) not in (None, ""):
                    values.setdefault(tag, []).append(float(row[tag]))
    return values


def _typical(values: list[float] | None) -> float | None:
    if not values:
        return None
    return statistics.median(values[1:] if len(values) > 2 else values)


def read_throughput_log(run_dir: str) -> MeasuredThroughput:
    """The newest perf/* scalars under `run_dir` (TensorBoard events first, then metrics.csv)."""
    if not os.path.exists(run_dir):
        raise GenLIPUserError(f"--throughput-log {run_dir!r} does not exist")
    if os.path.isfile(run_dir):
        candidates = [(run_dir, _scalars_from_csv if run_dir.endswith(".csv") else _scalars_from_events)]
    else:
        candidates = [(_newest(run_dir, lambda f: f.startswith("events.out.tfevents")), _scalars_from_events),
                      (_newest(run_dir, lambda f: f == "metrics.csv"), _scalars_from_csv)]
    for path, reader in candidates:
        if path is None:
            continue
        values = reader(path)
        if "perf/mfu" in values or "perf/samples_per_s" in values:
            rates = values.get("perf/mfu") or values.get("perf/samples_per_s") or []
            return MeasuredThroughput(path, _typical(values.get("perf/mfu")),
                                      _typical(values.get("perf/samples_per_s")),
                                      _typical(values.get("perf/train_flops_per_sample")), len(rates))
    raise GenLIPUserError(
        f"no perf/mfu or perf/samples_per_s under {run_dir!r}: train with the Throughput callback "
        "(genlip_lit.callbacks.Throughput) and a TensorBoard or CSV logger"
    )
