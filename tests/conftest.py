"""Fixtures shared by several test modules: the thread setting of tiny-tensor tests, and tiny checkpoints made once
per session (the builders are plain functions in tests/helpers.py)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-tensor tests: with 2 threads on a shared 2-core machine, OpenMP
    spin-waiting made the attentive probe 20-50x slower (0.4 s -> 10-30 s) whenever another process held a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _quickstart_fit(tmp_path_factory) -> str:
    """The folder of one 2-step `genlip fit` of the shrunk quickstart (helpers.tiny_fit_args), run once a session."""
    from helpers import REPO, tiny_fit_args

    from genlip_lit.cli import main

    tmp = tmp_path_factory.mktemp("quickstart_fit")
    os.chdir(REPO)  # the quickstart config names its files from the repository root
    assert main(tiny_fit_args(tmp, max_steps=2)) == 0
    return str(tmp)


@pytest.fixture(scope="module")
def quickstart_run(_quickstart_fit, tmp_path_factory) -> str:
    """This test module's own copy of the session's 2-step quickstart run (`runs/quickstart/version_0/` with its
    checkpoints at steps 2 and last, config and logs; mtimes kept): returns the path of its last.ckpt. A copy, so
    reports written beside it or files touched by one module never reach another; the synthetic data cache the
    checkpoint names stays the session's (read, never written)."""
    from helpers import last_checkpoint

    copy = tmp_path_factory.mktemp("quickstart_run")
    shutil.copytree(os.path.join(_quickstart_fit, "runs"), copy / "runs")
    return last_checkpoint(copy / "runs")
