"""ingest/output_lock.py: one `genlip optimize` per output directory; the second is refused naming the first."""

from __future__ import annotations

import os

import pytest

from genlip_lit.commands import optimize as opt
from genlip_lit.data.shards import LOCK_FILE
from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.output_lock import fcntl, output_lock

needs_flock = pytest.mark.skipif(fcntl is None, reason="no flock on this platform")


@needs_flock
def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path) -> None:
    out = str(tmp_path / "out")
    with output_lock(out):
        with pytest.raises(GenLIPUserError, match=rf"being written by another genlip optimize \(pid {os.getpid()} on "):
            with output_lock(out):
                pass
        # the command refuses before touching anything, for synthetic data as for corpora
        with pytest.raises(GenLIPUserError, match=f"pid {os.getpid()}"):
            opt.main(["--output", out, "--num-samples", "4", "--val-samples", "2", "--image-size", "16"])
        assert os.listdir(out) == [LOCK_FILE]
    with output_lock(out):  # released at the end of the run (the kernel also drops it if the holder dies)
        pass


def test_a_refused_run_leaves_no_directory_behind(tmp_path) -> None:
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with output_lock(str(out)):
            raise RuntimeError("a structural error after the lock was taken")
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(GenLIPUserError, match="not a directory"):
        with output_lock(str(tmp_path / "file")):
            pass
