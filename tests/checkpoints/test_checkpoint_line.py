"""Every command that takes --ckpt names the file it loaded, its step and its date; a run directory holding
several runs says which one it chose (issue 24: an accidental short run silently became the newest)."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil

import pytest

from genlip_lit.checkpoints.loading import checkpoint_line, load_checkpoint, resolve_checkpoint
from genlip_lit.cli import main


@pytest.fixture(scope="module")
def run_dir(quickstart_run) -> str:
    """runs/NAME, the folder of the versions, of this module's copy of a 2-step quickstart run (tests/conftest.py)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(quickstart_run)))


def test_loading_names_file_step_and_date(run_dir, caplog) -> None:
    (last,) = glob.glob(f"{run_dir}/version_*/checkpoints/last.ckpt")
    os.utime(last, (1_700_000_000, 1_700_000_000))  # 2023-11-14 22:13 UTC
    with caplog.at_level(logging.INFO, logger="genlip_lit"):
        load_checkpoint(last)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert lines == [f"loaded {last} (step 2, written 2023-11-14 22:13 UTC)"]


def test_a_run_directory_with_several_runs_says_which_it_chose(run_dir, tmp_path, caplog) -> None:
    (last,) = glob.glob(f"{run_dir}/version_*/checkpoints/last.ckpt")
    runs = tmp_path / "runs"
    for name, when in (("version_0", 1_700_000_000), ("version_1", 1_700_000_500), ("version_2", 1_700_000_100)):
        target = runs / name / "checkpoints" / "last.ckpt"
        target.parent.mkdir(parents=True)
        shutil.copyfile(last, target)
        os.utime(target, (when, when))
    with caplog.at_level(logging.INFO, logger="genlip_lit"):
        chosen = resolve_checkpoint(str(runs))
    assert chosen == str(runs / "version_1" / "checkpoints" / "last.ckpt")
    said = [r.getMessage() for r in caplog.records]
    assert any(f"{runs} holds 3 runs with a last.ckpt; using the newest, "
               f"{os.path.join('version_1', 'checkpoints', 'last.ckpt')}" in m for m in said), said
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="genlip_lit"):
        resolve_checkpoint(str(runs / "version_0"))  # one run: nothing to choose, nothing said
    assert not caplog.records


def test_caption_prints_the_loaded_line(run_dir, tmp_path, capsys) -> None:
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    assert main(["caption", "--ckpt", run_dir, str(image)]) in (0, None)
    err = capsys.readouterr().err
    (last,) = glob.glob(f"{run_dir}/version_*/checkpoints/last.ckpt")
    assert re.search(rf"genlip: loaded {re.escape(last)} \(step 2, written \d{{4}}-\d\d-\d\d \d\d:\d\d UTC\)", err), err


def test_checkpoint_line_without_a_step(tmp_path) -> None:
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"x")
    os.utime(path, (0, 0))
    assert checkpoint_line(str(path), {}) == f"loaded {path} (step unknown, written 1970-01-01 00:00 UTC)"
