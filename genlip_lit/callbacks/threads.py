"""`genlip fit --threads auto` (the default): torch CPU threads follow the cores other processes leave free.

    genlip fit --config experiments/quickstart.yaml                 # auto: 2 threads on 2 idle cores, 1 beside a busy process
    genlip fit --config experiments/quickstart.yaml --threads 1     # fixed: always 1 (0: torch's own choice)

Why: torch's intra-op threads wait for each other at every operation. On 2 cores with one other busy process,
2 threads make each step wait for the thread the system parked, and the quickstart fell from ~15 steps/s to
~4.5, while 1 thread kept ~10 (issue 24; benchmarks/bench_threads.py measures it). So `auto` reads how many
cores the *other* processes kept busy since the last look (Linux /proc/stat minus this process's own CPU time)
and sets threads = free cores (at least 1, at most the cores, at most OMP_NUM_THREADS when that is set),
at the start of training and then every `interval_s` seconds. Elsewhere (no /proc/stat) it leaves torch's choice.
Loader processes (data.num_workers > 0) count as other processes: on 2 cores they do compete with the math.
Runs of several ranks (DDP) keep torch's choice: each rank would count the others as competitors.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

_STAT = "/proc/stat"


def _busy_and_total() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, or None where /proc/stat is missing."""
    try:
        with open(_STAT, encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / tick, total / tick


def _own_cpu() -> float:
    """CPU seconds this process (all its threads) has used."""
    times = os.times()
    return times.user + times.system


def choose_threads(others_busy: float, cores: int, cap: int | None = None) -> int:
    """The thread count for `cores` cores when other processes keep `others_busy` of them busy."""
    free = int(cores - others_busy + 0.5)  # a competitor at 60% of a core still breaks a 2-thread barrier
    return max(1, min(cores, cap or cores, free))


class AdaptiveThreads(L.Callback):
    """Sets torch's CPU threads to the free cores at train start and every `interval_s` seconds (see above)."""

    def __init__(self, interval_s: float = 5.0, cores: int | None = None) -> None:
        self.interval_s = float(interval_s)
        self.cores = int(cores or _usable_cores())
        cap = os.environ.get("OMP_NUM_THREADS", "")
        self.cap = int(cap) if cap.isdigit() and int(cap) > 0 else None
        self._last: tuple[float, float, float] | None = None  # (busy, wall, own) at the last look
        self.history: list[int] = []  # the thread counts chosen, in order (logged at debug level)

    def _sample(self) -> tuple[float, float, float] | None:
        found = _busy_and_total()
        if found is None:
            return None
        busy, total = found
        return busy, total, _own_cpu()

    def others_busy(self) -> float | None:
        """Cores other processes kept busy since the last call (None on the first call or without /proc)."""
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        d_total = (now[1] - last[1]) / max(1, os.cpu_count() or 1)  # wall seconds seen by the counters
        if d_total <= 0:
            return None
        d_others = max(0.0, (now[0] - last[0]) - (now[2] - last[2]))
        return d_others / d_total

    def adjust(self) -> int | None:
        others = self.others_busy()
        if others is None:
            return None
        threads = choose_threads(others, self.cores, self.cap)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            log.debug("threads: %d (other processes kept %.1f of %d cores busy)", threads, others, self.cores)
        self.history.append(threads)
        return threads

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._sample() is None or getattr(trainer, "world_size", 1) > 1:
            return  # not Linux, or several ranks on one machine (each would count the others): torch's choice
        self._last = self._sample()
        time.sleep(0.2)  # a first look before the first step, then one per interval
        threads = self.adjust()
        self._next = time.monotonic() + self.interval_s
        if threads is not None:
            log.info("threads: %d of %d cores (--threads auto: other processes use the rest; --threads N fixes it)",
                     threads, self.cores)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._last is not None and time.monotonic() >= self._next:
            self.adjust()
            self._next = time.monotonic() + self.interval_s


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
