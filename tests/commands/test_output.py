"""commands/output.py: a staged --output is whole or absent, and what a killed run left behind is cleared."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from genlip_lit.commands.output import MARKER, remove_abandoned_staging, staged_output


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftover(parent, name: str, pid: int, host: str | None = None) -> str:
    path = parent / f".{name}.partial-{host or socket.gethostname()}-{pid}-abc123"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"half a file")
    return str(path)


def test_a_finished_block_moves_the_files_into_place_and_leaves_no_staging(tmp_path) -> None:
    with staged_output(str(tmp_path / "out"), "export") as staging:
        (open(os.path.join(staging, "config.json"), "w")).close()
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["config.json", MARKER])
    assert os.listdir(tmp_path) == ["out"]


def test_an_error_in_the_block_leaves_neither_output_nor_staging(tmp_path) -> None:
    with pytest.raises(RuntimeError), staged_output(str(tmp_path / "out"), "export") as staging:
        (open(os.path.join(staging, "config.json"), "w")).close()
        raise RuntimeError("refused")
    assert os.listdir(tmp_path) == []


def test_the_staging_of_a_killed_run_is_removed_by_the_next_one(tmp_path, caplog) -> None:
    dead = _leftover(tmp_path, "out", _dead_pid())
    live = _leftover(tmp_path, "out", os.getppid())  # a run still writing: not ours to touch
    remote = _leftover(tmp_path, "out", _dead_pid(), host="another-node")  # its pid means nothing here
    other = _leftover(tmp_path, "other", _dead_pid())  # another output's staging
    with staged_output(str(tmp_path / "out"), "export") as staging:
        (open(os.path.join(staging, "config.json"), "w")).close()
    assert not os.path.exists(dead) and all(os.path.isdir(p) for p in (live, remote, other))
    assert "interrupted run" in caplog.text and dead in caplog.text
    assert remove_abandoned_staging(str(tmp_path / "out")) == []  # nothing more to clear


def test_a_killed_export_leaves_a_staging_folder_that_the_next_export_clears(tmp_path) -> None:
    code = ("import os, sys\n"
            "from genlip_lit.commands.output import staged_output\n"
            f"with staged_output({str(tmp_path / 'out')!r}, 'export') as staging:\n"
            "    open(os.path.join(staging, 'weights'), 'w').close()\n"
            "    os.kill(os.getpid(), 9)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == -9
    left = [name for name in os.listdir(tmp_path) if ".partial-" in name]
    assert len(left) == 1 and not (tmp_path / "out").exists()
    with staged_output(str(tmp_path / "out"), "export") as staging:
        (open(os.path.join(staging, "config.json"), "w")).close()
    assert os.listdir(tmp_path) == ["out"]
