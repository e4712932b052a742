"""genlip_lit.console.progress: plain periodic lines off a terminal (counts, rate, ETA), rich bars on one, nesting."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from genlip_lit.console import logs, progress
from genlip_lit.console.progress import Progress, format_duration, resolve_mode, track


@pytest.fixture(autouse=True)
def _default_verbosity(monkeypatch):
    monkeypatch.setattr(logs, "_verbosity", 0)  # another test may have run `genlip -q ...` in this process


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    """The plain progress lines logged while a test runs."""
    caplog.set_level(logging.INFO, logger="genlip_lit.console.progress")

    def get() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "genlip_lit.console.progress"]

    return get


def test_plain_lines_every_percent_step_with_counts_rate_and_eta(lines):
    clock = FakeClock()
    with progress.progress(total=200, description="optimize", unit="images", mode="plain", interval_s=1e9,
                           percent_step=25, clock=clock) as bar:
        for _ in range(200):
            clock.now += 0.5  # 2 images/s
            bar.advance()
    out = lines()
    # 25%, 50%, 75%, 100% of the total, then the closing line
    assert out[:4] == [
        "optimize: 50/200 images (25.0%), 2.0 images/s, elapsed 0:25, ETA 1:15",
        "optimize: 100/200 images (50.0%), 2.0 images/s, elapsed 0:50, ETA 0:50",
        "optimize: 150/200 images (75.0%), 2.0 images/s, elapsed 1:15, ETA 0:25",
        "optimize: 200/200 images (100.0%), 2.0 images/s, elapsed 1:40, ETA 0:00",
    ]
    assert out[4] == "optimize: done, 200 images in 1:40 (2.0 images/s)"
    assert len(out) == 5


def test_plain_lines_every_interval_when_percent_moves_slowly(lines):
    clock = FakeClock()
    with progress.progress(total=10_000, description="eval", unit="batches", mode="plain", interval_s=30,
                           percent_step=50, clock=clock) as bar:
        for _ in range(100):
            clock.now += 1.0
            bar.advance(10)
    out = lines()
    # 100 s at 10 batches/s: lines at 30, 60 and 90 s (the 50% step is never reached), then the closing line
    assert out == [
        "eval: 300/10,000 batches (3.0%), 10.0 batches/s, elapsed 0:30, ETA 16:10",
        "eval: 600/10,000 batches (6.0%), 10.0 batches/s, elapsed 1:00, ETA 15:40",
        "eval: 900/10,000 batches (9.0%), 10.0 batches/s, elapsed 1:30, ETA 15:10",
        "eval: done, 1,000 batches in 1:40 (10.0 batches/s)",
    ]


def test_stages_nest_and_unknown_totals_have_no_eta(lines):
    clock = FakeClock()
    with progress.progress(description="eval", mode="plain", interval_s=10, clock=clock) as run:
        with run.stage("probe", unit="probes") as probe:
            clock.now += 20
            probe.advance(2)
        # a library function opening its own progress inside: it becomes a stage of the open one
        with progress.progress(total=4, description="captions", unit="images") as caps:
            clock.now += 4
            caps.advance(4)
    out = lines()
    assert out[0] == "eval > probe: 2 probes, 0.1 probes/s, elapsed 0:20"
    assert out[1] == "eval > probe: done, 2 probes in 0:20 (0.1 probes/s)"
    assert out[2] == "eval > captions: 4/4 images (100.0%), 1.0 images/s, elapsed 0:04, ETA 0:00"
    assert out[3] == "eval > captions: done, 4 images in 0:04 (1.0 images/s)"
    assert out[4].startswith("eval: done")


def test_failure_and_resume_lines(lines):
    clock = FakeClock()
    with pytest.raises(RuntimeError):
        with progress.progress(total=10, description="export", unit="tensors", mode="plain", clock=clock) as bar:
            bar.resume_at(4)  # done by an earlier run: not part of the rate
            clock.now += 2
            bar.advance(2)
            raise RuntimeError("boom")
    assert lines()[-1] == "export: stopped at 6/10 tensors after 0:02"


def test_track_counts_items_and_off_mode_is_silent(lines):
    assert list(track(range(3), description="x", mode="off")) == [0, 1, 2]
    assert lines() == []
    assert list(track([1, 2], description="y", mode="plain", interval_s=0)) == [1, 2]
    assert lines()[-1].startswith("y: done, 2 items in")


def test_mode_follows_the_terminal_environment_and_quiet(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("GENLIP_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert resolve_mode() == "plain"
    monkeypatch.setattr(sys, "stderr", Tty())
    assert resolve_mode() == "rich"
    monkeypatch.setenv("GENLIP_PROGRESS", "plain")
    assert resolve_mode() == "plain"
    monkeypatch.setattr(logs, "_verbosity", -1)  # genlip -q
    assert resolve_mode() == "off"
    with pytest.raises(ValueError, match="progress mode"):
        resolve_mode("fancy")


def test_tty_renders_rich_bars_with_counts(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Tty()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.delenv("GENLIP_PROGRESS", raising=False)
    with progress.progress(total=10, description="optimize", unit="images") as bar:
        assert bar.mode == "rich" and bar._display is not None
        with bar.stage("encode", total=3, unit="chunks") as stage:
            stage.advance(3)
        bar.advance(7)
    from rich.progress import Progress as RichProgress

    assert isinstance(bar._display._progress, RichProgress)
    text = screen.getvalue()
    assert "optimize" in text and "7/10 images" in text and "\x1b[" in text  # an animated terminal display


def test_rich_falls_back_to_plain_lines_under_another_live_display(lines, monkeypatch):
    """rich < 14 refuses a second live display (Lightning's RichProgressBar during fit): plain lines instead."""
    from rich.errors import LiveError

    def refuse() -> None:
        raise LiveError("Only one live display may be active at once")

    monkeypatch.setattr(progress, "_RichDisplay", refuse)
    with progress.progress(total=2, description="probe", unit="probes", mode="rich", interval_s=0) as bar:
        bar.advance(2)
    assert bar.mode == "plain" and lines()[-1].startswith("probe: done, 2 probes in ")


def test_format_duration():
    assert [format_duration(s) for s in (0, 7, 754, 3723)] == ["0:00", "0:07", "12:34", "1:02:03"]


def test_progress_object_without_with():
    bar = Progress(5, "fit", "steps", mode="off").start()
    bar.advance(5)
    assert bar.percent == 100.0
    bar.close()
    assert progress._open == []


def test_results_printed_under_rich_bars_stay_on_a_redirected_stdout(monkeypatch):
    """Bars on a terminal (stderr), results to a file (stdout): rich must not route print() to stderr."""
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen, results = Tty(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(sys, "stdout", results)
    monkeypatch.delenv("GENLIP_PROGRESS", raising=False)
    with progress.progress(total=2, description="caption", unit="images") as bar:
        assert bar.mode == "rich"
        print("a.png\ta red circle")
        bar.advance(2)
    assert results.getvalue() == "a.png\ta red circle\n" and "a red circle" not in screen.getvalue()
