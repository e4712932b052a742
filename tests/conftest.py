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


def _fit_quickstart(tmp_path_factory, name: str, max_steps: int, extra: list[str]) -> str:
    """Run the shrunk quickstart (helpers.tiny_fit_args) in a fresh folder; return the folder."""
    from helpers import REPO, tiny_fit_args

    from genlip_lit.cli import main

    tmp = tmp_path_factory.mktemp(name)
    os.chdir(REPO)  # the quickstart config names its files from the repository root
    assert main(tiny_fit_args(tmp, max_steps=max_steps, extra=extra)) == 0
    return str(tmp)


def _copy_of(folder: str, tmp_path_factory, name: str):
    """A copy of a session run's runs/ (checkpoints, config, logs; mtimes kept), so that reports written beside a
    checkpoint or files touched by one test module never reach another. The data cache stays the session's, where
    the checkpoints name it (a resume checks the loader's input folder): read, never written."""
    copy = tmp_path_factory.mktemp(name)
    shutil.copytree(os.path.join(folder, "runs"), copy / "runs")
    return copy


@pytest.fixture(scope="session")
def _quickstart_fit(tmp_path_factory) -> str:
    """One 2-step `genlip fit` of the shrunk quickstart, run once a session."""
    return _fit_quickstart(tmp_path_factory, "quickstart_fit", 2, [])


@pytest.fixture(scope="module")
def quickstart_run(_quickstart_fit, tmp_path_factory) -> str:
    """This test module's own copy of the session's 2-step quickstart run: the path of its last.ckpt (under
    runs/quickstart/version_0/checkpoints/, beside the step-2 checkpoint)."""
    from helpers import last_checkpoint

    return last_checkpoint(_copy_of(_quickstart_fit, tmp_path_factory, "quickstart_run"))


@pytest.fixture(scope="session")
def _quickstart_fit_4(tmp_path_factory) -> tuple[str, list[dict]]:
    """One 4-step `genlip fit` of the shrunk quickstart with helpers.Recorder, run once a session: its folder and
    what the recorder saw (the step and learning rate at the start and after every optimizer step)."""
    from helpers import RECORDS

    RECORDS.clear()
    folder = _fit_quickstart(tmp_path_factory, "quickstart_fit_4", 4, ["--trainer.callbacks+=helpers.Recorder"])
    return folder, list(RECORDS)


@pytest.fixture(scope="module")
def quickstart_run_4(_quickstart_fit_4, tmp_path_factory) -> tuple[str, list[dict]]:
    """This test module's own copy of the session's 4-step quickstart run: (its folder, holding runs/quickstart/
    version_0/ with checkpoints at steps 2 and 4 and last.ckpt; the recorder's records)."""
    folder, records = _quickstart_fit_4
    return str(_copy_of(folder, tmp_path_factory, "quickstart_run_4")), list(records)
