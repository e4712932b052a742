"""What a run logged, read back: the scalar series of its TensorBoard event files and its CSVLogger metrics.csv.

    series = read_scalars("runs/quickstart/version_0")        # {"train/loss": [(step, value), ...], ...}
    folders = log_dirs("runs/stage1_b16")                      # its version folders, the one written last first

The one reader behind `genlip compare` (studies/compare_report.py: the last value of every metric, the curves)
and `genlip plan --throughput-log` (plan/logs.py: the measured MFU). A resumed run logs into the same folder again
(a second event file, more rows in metrics.csv) and repeats the steps it had logged after its last checkpoint:
each series keeps one value per step, the one written last (the newer event file, the later CSV row, CSV after
TensorBoard), so the resumed run's values replace the interrupted run's and nothing is counted twice.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Collection
from pathlib import Path

EVENTS_PREFIX = "events.out.tfevents"  # TensorBoard's event file names
CSV_NAME = "metrics.csv"  # Lightning CSVLogger's file name

Series = dict[str, list[tuple[int, float]]]


def is_log_file(name: str) -> bool:
    return name.startswith(EVENTS_PREFIX) or name == CSV_NAME


def log_dirs(root: str | Path) -> list[Path]:
    """Every folder at or below `root` holding an event file or metrics.csv, the most recently written first."""
    newest: dict[Path, float] = {}
    for folder, _, names in os.walk(root):
        times = [os.path.getmtime(os.path.join(folder, n)) for n in names if is_log_file(n)]
        if times:
            newest[Path(folder)] = max(times)
    return sorted(newest, key=lambda folder: newest[folder], reverse=True)


def read_scalars(path: str | Path, tags: Collection[str] | None = None) -> Series:
    """Scalar series of a log folder (all its event files, oldest first, then metrics.csv) or of one such file,
    as step-sorted (step, value) with one value per step, the last written (see the module docstring).
    `tags`: only these series (None: all)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        files = sorted(path.glob(f"{EVENTS_PREFIX}*"), key=lambda p: p.stat().st_mtime)
        files += [path / CSV_NAME] if (path / CSV_NAME).is_file() else []
    per_step: dict[str, dict[int, float]] = {}
    for file in files:
        read = _read_csv if file.name.endswith(".csv") else _read_events
        for tag, values in read(file, tags).items():
            per_step.setdefault(tag, {}).update(values)  # a later file's value for a step replaces the earlier
    return {tag: sorted(values.items()) for tag, values in per_step.items()}


def _read_events(path: Path, tags: Collection[str] | None) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of one TensorBoard event file (within it, the later event of a step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every event, no sampling
    acc.Reload()
    found = [t for t in acc.Tags().get("scalars", []) if tags is None or t in tags]
    return {tag: {event.step: event.value for event in acc.Scalars(tag)} for tag in found}


def _read_csv(path: Path, tags: Collection[str] | None) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of a CSVLogger file: a row per logging call, empty cells for what it did not log;
    a later row of a step wins. Rows without a step and cells that are not numbers are passed over."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for tag, value in row.items():
                if tag in ("step", "epoch") or value in ("", None) or (tags is not None and tag not in tags):
                    continue
                try:
                    series.setdefault(tag, {})[step] = float(value)
                except ValueError:
                    continue  # not a number (a text column): not a scalar series
    return series
