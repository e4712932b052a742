"""Progress of long commands: rich bars with totals and ETA on a terminal, plain periodic lines in a log file.

    from genlip_lit.console.progress import progress, track

    with progress(total=num_images, description="optimize", unit="images") as bar:
        for unit in units:
            ...
            bar.advance(kept)                  # add to the count
            bar.set_postfix(f"{skipped} skipped")   # short status shown after the counts
            bar.update(total=new_total)        # the total became known or changed (also completed=, description=)

    with progress(description="eval") as run:                     # total=None: a count without a total
        with run.stage("probe", total=3, unit="probes") as probe:  # nested stage: its own row / its own lines
            for ...:
                probe.advance()
        with run.stage("captions", total=500, unit="images") as captions:
            ...

    for batch in track(loader, total=len(loader), description="extract", unit="batches"):
        ...

    bar = progress(total=n, description="export").start()   # without `with` (callbacks): start() ... close()

Rendering (`mode`, or the GENLIP_PROGRESS environment variable: auto | rich | plain | off):
- rich, the default when stderr is a terminal: one animated row per open stage with counts, percentage, rate,
  elapsed time and ETA (rich on stderr; log lines printed meanwhile appear above the bars).
- plain, the default when stderr is not a terminal (a log file, CI): a log line through the `genlip_lit.console.progress`
  logger every `interval_s` seconds (default 30) or every `percent_step` percent of the total (default 5),
  whichever comes first, e.g.
      genlip: optimize: 1,200/20,000 images (6.0%), 40.1 images/s, elapsed 0:30, ETA 7:49
  and one line when a stage ends: `genlip: eval > probe: done, 3 probes in 0:41 (0.07 probes/s)`.
- off, and also when the command runs with `-q`: nothing.

`progress()` inside another open progress becomes a stage of it, so a library function may open its own progress
and it nests under the command's. Everything that reaches the screen goes to stderr; stdout stays for results.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from genlip_lit.console import logs

log = logging.getLogger(__name__)

T = TypeVar("T")
MODES = ("auto", "rich", "plain", "off")
DEFAULT_INTERVAL_S = 30.0
DEFAULT_PERCENT_STEP = 5.0

_open: list[Progress] = []  # the progress objects open right now, outermost first


def progress(
    total: float | None = None,
    description: str = "",
    unit: str = "items",
    *,
    mode: str | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    percent_step: float = DEFAULT_PERCENT_STEP,
    clock: Callable[[], float] = time.monotonic,
) -> Progress:
    """A progress display for `total` `unit`s of work (a stage of the open one, if any); use it with `with`."""
    if _open:
        return _open[-1].stage(description, total=total, unit=unit)
    return Progress(total, description, unit, mode=resolve_mode(mode), interval_s=interval_s,
                    percent_step=percent_step, clock=clock)


def track(iterable: Iterable[T], total: float | None = None, description: str = "", unit: str = "items",
          **kwargs: Any) -> Iterator[T]:
    """Yield from `iterable`, advancing a progress by one per item (`total` defaults to `len(iterable)`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress(total=total, description=description, unit=unit, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.advance()


def resolve_mode(mode: str | None = None) -> str:
    """`mode`, else $GENLIP_PROGRESS, else auto; auto = rich on a terminal, plain otherwise; off under `-q`."""
    mode = (mode or os.environ.get("GENLIP_PROGRESS") or "auto").lower()
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
    if logs.verbosity() < 0:
        return "off"
    if mode == "auto":
        stream = sys.stderr
        return "rich" if hasattr(stream, "isatty") and stream.isatty() else "plain"
    return mode


class Progress:
    """One unit of tracked work (a whole command or one stage of it). Create it with `progress()`."""

    def __init__(self, total: float | None, description: str, unit: str, *, mode: str = "plain",
                 interval_s: float = DEFAULT_INTERVAL_S, percent_step: float = DEFAULT_PERCENT_STEP,
                 clock: Callable[[], float] = time.monotonic, parent: Progress | None = None) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.mode, self.interval_s, self.percent_step, self.clock = mode, interval_s, percent_step, clock
        self.parent = parent
        self.completed: float = 0
        self.baseline: float = 0  # work done before this run started (a resumed fit): not part of the rate
        self.postfix = ""
        self.started_at: float | None = None
        self._last_line_at = 0.0
        self._next_percent = percent_step
        self._display: _RichDisplay | None = parent._display if parent is not None else None
        self._task: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Progress:
        self.started_at = self._last_line_at = self.clock()
        if self.mode == "rich":
            if self._display is None:
                try:
                    self._display = _RichDisplay()
                except Exception as err:  # noqa: BLE001 - rich.errors.LiveError: another live display is on
                    # (e.g. Lightning's RichProgressBar while a fit callback evaluates): plain lines instead
                    if type(err).__name__ != "LiveError":
                        raise
                    self.mode = "plain"
            if self._display is not None:
                self._task = self._display.add(self)
        _open.append(self)
        return self

    def close(self, failed: bool = False) -> None:
        """End this stage: remove its row (rich; the outermost stays on screen) and print its closing line."""
        if self.started_at is None:
            return
        if self in _open:
            _open.remove(self)
        if self._display is not None:
            self._display.refresh(self)
            if self.parent is not None:
                self._display.remove(self)
            else:
                self._display.stop()
        if self.mode == "plain" or (self.mode == "rich" and self.parent is not None):
            log.info("%s", self.closing_line(failed))
        self.started_at = None

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(failed=exc_type is not None)

    def stage(self, description: str, total: float | None = None, unit: str | None = None) -> Progress:
        """A nested stage (use it with `with`): its own row under this one, or its own plain lines."""
        return Progress(total, description, unit or self.unit, mode=self.mode, interval_s=self.interval_s,
                        percent_step=self.percent_step, clock=self.clock, parent=self)

    # ------------------------------------------------------------------ updates
    def advance(self, n: float = 1) -> None:
        self.completed += n
        self._changed()

    def update(self, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self._changed()

    def resume_at(self, completed: float) -> None:
        """Start counting from `completed` (work done by an earlier run): the rate and ETA count only new work."""
        self.completed = self.baseline = completed
        self._changed()

    def set_postfix(self, text: str) -> None:
        """A short status shown after the counts (e.g. a loss, a skip count) at the next refresh."""
        self.postfix = text
        if self._display is not None:
            self._display.refresh(self)

    def _changed(self) -> None:
        if self.started_at is None or self.mode == "off":
            return
        if self._display is not None:
            self._display.refresh(self)
            return
        now = self.clock()
        percent = self.percent
        due = now - self._last_line_at >= self.interval_s
        if percent is not None and percent >= self._next_percent:
            due = True
        if due:
            self._last_line_at = now
            if percent is not None and self.percent_step > 0:
                self._next_percent = (math.floor(percent / self.percent_step) + 1) * self.percent_step
            log.info("%s", self.status_line())

    # ------------------------------------------------------------------ numbers and lines
    @property
    def percent(self) -> float | None:
        if not self.total:
            return None
        return 100.0 * self.completed / self.total

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else max(self.clock() - self.started_at, 0.0)

    @property
    def rate(self) -> float | None:
        """Units per second since the start (an average: steadier ETAs than a recent window)."""
        elapsed, done = self.elapsed, self.completed - self.baseline
        return done / elapsed if elapsed > 0 and done > 0 else None

    @property
    def eta(self) -> float | None:
        rate = self.rate
        if not self.total or rate is None:
            return None
        return max(self.total - self.completed, 0) / rate

    @property
    def label(self) -> str:
        names = []
        node: Progress | None = self
        while node is not None:
            if node.description:
                names.append(node.description)
            node = node.parent
        return " > ".join(reversed(names))

    def status_line(self) -> str:
        """`label: 1,200/20,000 images (6.0%), 40.1 images/s, elapsed 0:30, ETA 7:49[, postfix]`."""
        count = _number(self.completed)
        if self.total:
            count += f"/{_number(self.total)} {self.unit} ({self.percent:.1f}%)"
        else:
            count += f" {self.unit}"
        parts = [count]
        if self.rate is not None:
            parts.append(f"{_rate(self.rate)} {self.unit}/s")
        parts.append(f"elapsed {format_duration(self.elapsed)}")
        if self.eta is not None:
            parts.append(f"ETA {format_duration(self.eta)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.label}: " + ", ".join(parts)

    def closing_line(self, failed: bool = False) -> str:
        if failed:
            total = f"/{_number(self.total)}" if self.total else ""
            return f"{self.label}: stopped at {_number(self.completed)}{total} {self.unit} after " \
                   f"{format_duration(self.elapsed)}"
        rate = f" ({_rate(self.rate)} {self.unit}/s)" if self.rate is not None else ""
        postfix = f", {self.postfix}" if self.postfix else ""
        return f"{self.label}: done, {_number(self.completed)} {self.unit} in {format_duration(self.elapsed)}" \
               f"{rate}{postfix}"


def format_duration(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"


def _rate(rate: float) -> str:
    return f"{rate:,.1f}" if rate >= 1 else f"{rate:.2g}"


class _RichDisplay:
    """One rich.progress.Progress on stderr shared by a progress and its stages (one row each)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[postfix]}"),
            console=Console(stderr=True),
            # rich would route print() through its stderr console: results piped or redirected to a file
            # (`genlip caption DIR > captions.tsv`) must stay on stdout, so redirect only when both are terminals
            redirect_stdout=sys.stdout.isatty(),
        )
        self._progress.start()

    def add(self, item: Progress) -> Any:
        depth = 0
        node = item.parent
        while node is not None:
            depth, node = depth + 1, node.parent
        return self._progress.add_task("  " * depth + (item.description or "working"), total=item.total,
                                       count="", rate="", postfix="")

    def refresh(self, item: Progress) -> None:
        if item._task is None:
            return
        count = _number(item.completed) + (f"/{_number(item.total)}" if item.total else "") + f" {item.unit}"
        rate = f"{_rate(item.rate)} {item.unit}/s" if item.rate is not None else ""
        self._progress.update(item._task, completed=item.completed, total=item.total, count=count, rate=rate,
                              postfix=item.postfix)

    def remove(self, item: Progress) -> None:
        if item._task is not None:
            self._progress.remove_task(item._task)
            item._task = None

    def stop(self) -> None:
        self._progress.stop()
