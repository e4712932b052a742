"""The throughput a previous run measured: `Throughput` callback scalars from TensorBoard events or Lightning CSV.

    genlip plan --config experiments/stage1_corpus.yaml --throughput-log runs/stage1_b16/version_0

Reads perf/mfu, perf/samples_per_s and perf/train_flops_per_sample from the most recently written log folder
under the run directory (or the one log file named), through the run-log reader `genlip compare` uses
(console/run_logs.py: one value per step, a resumed run's repeated steps counted once). Rates are medians over
the logged windows (the first window, which includes warm-up and compilation, is dropped when there are more),
so one slow window does not set the plan.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from genlip_lit.console.run_logs import log_dirs, read_scalars
from genlip_lit.errors import GenLIPUserError

TAGS = ("perf/mfu", "perf/samples_per_s", "perf/train_flops_per_sample")


@dataclass
class MeasuredThroughput:
    source: str  # the log folder (or file) read
    mfu: float | None
    samples_per_s: float | None  # per GPU (the callback logs each rank's own samples)
    flops_per_sample: float | None
    windows: int  # logged rate windows behind the medians


def _typical(series: list[tuple[int, float]] | None) -> float | None:
    if not series:
        return None
    values = [value for _, value in series]
    return statistics.median(values[1:] if len(values) > 2 else values)


def read_throughput_log(run_dir: str) -> MeasuredThroughput:
    """The perf/* scalars of the newest log folder under `run_dir` that has them (or of the file `run_dir`)."""
    if not os.path.exists(run_dir):
        raise GenLIPUserError(f"--throughput-log {run_dir!r} does not exist")
    for source in [Path(run_dir)] if os.path.isfile(run_dir) else log_dirs(run_dir):
        series = read_scalars(source, TAGS)
        rates = series.get("perf/mfu") or series.get("perf/samples_per_s")
        if rates:
            return MeasuredThroughput(str(source), _typical(series.get("perf/mfu")),
                                      _typical(series.get("perf/samples_per_s")),
                                      _typical(series.get("perf/train_flops_per_sample")), len(rates))
    raise GenLIPUserError(
        f"no perf/mfu or perf/samples_per_s under {run_dir!r}: train with the Throughput callback "
        "(genlip_lit.callbacks.Throughput) and a TensorBoard or CSV logger"
    )
