"""The one run-log reader (console/run_logs.py) that `genlip compare` and `genlip plan --throughput-log` share:
a resumed run repeats the steps it logged after its last checkpoint, and each step must count once, with the
value written last."""

from __future__ import annotations

import csv
import os

import pytest

from genlip_lit.console.run_logs import log_dirs, read_scalars
from genlip_lit.plan.logs import read_throughput_log

FIRST_TRY = {0: 0.05, 1: 0.30, 2: 0.31, 3: 0.99, 4: 0.99}  # interrupted after step 4, last checkpoint at step 2
RESUMED = {3: 0.32, 4: 0.33, 5: 0.34}  # the resumed run logs steps 3 and 4 again
EXPECTED = [(0, 0.05), (1, 0.30), (2, 0.31), (3, 0.32), (4, 0.33), (5, 0.34)]


def write_csv(path, rows: dict[int, float], append: bool = False) -> None:
    with open(path, "a" if append else "w", newline="") as fh:
        writer = csv.writer(fh)
        if not append:
            writer.writerow(["step", "epoch", "perf/mfu", "note"])
        writer.writerows([step, 0, value, "text"] for step, value in rows.items())


def write_events(folder, rows: dict[int, float], mtime: float) -> None:
    from torch.utils.tensorboard import SummaryWriter

    before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    writer = SummaryWriter(str(folder), filename_suffix=f".{len(before)}")
    for step, value in rows.items():
        writer.add_scalar("perf/mfu", value, step)
    writer.close()
    (new,) = set(os.listdir(folder)) - before
    os.utime(folder / new, (mtime, mtime))  # file order by write time, not by the clock's resolution


def assert_series(series, expected) -> None:
    assert [step for step, _ in series] == [step for step, _ in expected]
    assert [value for _, value in series] == pytest.approx([value for _, value in expected])


def test_a_resumed_csv_run_counts_each_step_once_with_its_last_value(tmp_path) -> None:
    write_csv(tmp_path / "metrics.csv", FIRST_TRY)
    write_csv(tmp_path / "metrics.csv", RESUMED, append=True)  # CSVLogger appends on resume
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"perf/mfu"}  # step/epoch are axes and a text column is no series
    assert_series(scalars["perf/mfu"], EXPECTED)
    assert read_scalars(tmp_path, tags=["train/loss"]) == {}

    # `genlip plan` reads the same series: 6 windows, not 8, and the interrupted 0.99s are gone
    log = read_throughput_log(str(tmp_path))
    assert log.windows == 6 and log.mfu == pytest.approx(0.32)  # median of the 5 after the warm-up window


def test_a_resumed_tensorboard_run_counts_each_step_once_with_its_last_value(tmp_path) -> None:
    write_events(tmp_path, FIRST_TRY, mtime=1_000_000)
    write_events(tmp_path, RESUMED, mtime=2_000_000)  # the resumed run's own, newer, event file
    assert_series(read_scalars(tmp_path)["perf/mfu"], EXPECTED)
    log = read_throughput_log(str(tmp_path))
    assert log.windows == 6 and log.mfu == pytest.approx(0.32) and log.samples_per_s is None


def test_plan_reads_the_newest_log_folder_that_has_the_rates(tmp_path) -> None:
    old, new, empty = (tmp_path / f"version_{i}" for i in range(3))
    for folder in (old, new, empty):
        folder.mkdir()
    write_csv(old / "metrics.csv", {0: 0.1, 1: 0.1, 2: 0.1})
    write_csv(new / "metrics.csv", {0: 0.5, 1: 0.5, 2: 0.5})
    (empty / "metrics.csv").write_text("step,epoch,train/loss\n3,0,1.5\n")  # newest, but no perf/* scalars
    for age, folder in enumerate((empty, new, old)):
        os.utime(folder / "metrics.csv", (2_000_000 - age, 2_000_000 - age))
    assert log_dirs(tmp_path) == [empty, new, old]
    log = read_throughput_log(str(tmp_path))
    assert log.source == str(new) and log.mfu == pytest.approx(0.5)
    assert read_throughput_log(str(old / "metrics.csv")).mfu == pytest.approx(0.1)  # one file named directly
