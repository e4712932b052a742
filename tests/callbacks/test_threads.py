"""`genlip fit --threads auto|N|0`: the thread choice follows the cores other processes leave free (the figures
behind it come from benchmarks/bench_threads.py, not from a timed test)."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO

from genlip_lit.callbacks import threads as threads_mod
from genlip_lit.callbacks.threads import AdaptiveThreads, choose_threads
from genlip_lit.commands.fit import apply_threads
from genlip_lit.errors import GenLIPUserError


def test_choose_threads_leaves_the_busy_cores_to_their_owners() -> None:
    assert choose_threads(0.05, cores=2) == 2  # idle: every core
    assert choose_threads(1.0, cores=2) == 1  # one busy process: a 2-thread barrier would wait on it
    assert choose_threads(0.6, cores=2) == 1
    assert choose_threads(7.5, cores=2) == 1  # never below one
    assert choose_threads(2.0, cores=8) == 6
    assert choose_threads(0.0, cores=8, cap=4) == 4  # OMP_NUM_THREADS caps it


def test_adaptive_threads_follow_what_other_processes_use(monkeypatch) -> None:
    clock = {"busy": 0.0, "total": 0.0, "own": 0.0}
    monkeypatch.setattr(threads_mod, "_busy_and_total", lambda: (clock["busy"], clock["total"]))
    monkeypatch.setattr(threads_mod, "_own_cpu", lambda: clock["own"])
    monkeypatch.setattr(threads_mod.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        callback = AdaptiveThreads(cores=2)
        assert callback.adjust() is None  # a first look has nothing to compare with
        # 10 s on 2 cores (20 CPU-seconds); this process used 19, the rest of the machine 0.5: idle -> 2 threads
        clock.update(busy=19.5, total=20.0, own=19.0)
        assert callback.adjust() == 2 and torch.get_num_threads() == 2
        # next 10 s: a competitor kept one core busy (10 s) while this process got 9.5 -> 1 thread
        clock.update(busy=19.5 + 19.5, total=40.0, own=19.0 + 9.5)
        assert callback.adjust() == 1 and torch.get_num_threads() == 1
        # the competitor left: back to 2
        clock.update(busy=39.0 + 19.8, total=60.0, own=28.5 + 19.7)
        assert callback.adjust() == 2 and callback.history == [2, 1, 2]
    finally:
        torch.set_num_threads(before)


def test_fixed_threads_and_bad_values(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        assert apply_threads("auto") is True
        assert apply_threads(1) is False and torch.get_num_threads() == 1
        assert apply_threads(0) is False and torch.get_num_threads() == 1  # 0: left as it is
        with pytest.raises(GenLIPUserError, match="--threads must be auto or an integer >= 0"):
            apply_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_fit_takes_threads_like_the_other_commands(tmp_path) -> None:
    import os

    from helpers import tiny_fit_args

    from genlip_lit.commands.fit import GenLIPCLI
    from genlip_lit.modules.base import EncoderModule

    os.chdir(REPO)
    before = torch.get_num_threads()

    def build(*extra: str):
        return GenLIPCLI(model_class=EncoderModule, subclass_mode_model=True, datamodule_class=None, run=False,
                         args=[a for a in tiny_fit_args(tmp_path, extra=list(extra))[1:] if a != "--threads=0"],
                         auto_configure_optimizers=False)
    try:
        default = build()
        assert default.config["threads"] == "auto"
        assert sum(isinstance(c, AdaptiveThreads) for c in default.trainer.callbacks) == 1
        fixed = build("--threads=1")
        assert torch.get_num_threads() == 1
        assert not any(isinstance(c, AdaptiveThreads) for c in fixed.trainer.callbacks)
    finally:
        torch.set_num_threads(before)
