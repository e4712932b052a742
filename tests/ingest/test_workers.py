"""ingest/workers.py: results come back, a dead worker is named instead of hanging the run, and workers do not
outlive their parent (they used to keep writing for ~20 s after a kill -9 of `genlip optimize`)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.workers import WorkerDied, run_jobs

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork workers and /proc")


def _square(job):
    return job[1] ** 2


def test_every_job_runs_once_and_reports_back() -> None:
    results = {}
    run_jobs([(i, i) for i in range(7)], _square, 3, results.__setitem__)
    assert results == {i: i * i for i in range(7)}
    assert multiprocessing.active_children() == []


def _fails_on_three(job):
    if job[0] == 3:
        raise GenLIPUserError("the image file list changed since the units were planned")
    return job[0]


def _dies_on_two(job):
    if job[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer or a decoder segfault does
    return job[0]


@linux_only
def test_a_job_error_is_raised_in_the_parent_with_its_type() -> None:
    with pytest.raises(GenLIPUserError, match="file list changed"):
        run_jobs([(i, i) for i in range(5)], _fails_on_three, 2, lambda *a: None)
    assert multiprocessing.active_children() == []  # the other worker was stopped


@linux_only
@pytest.mark.timeout(120)  # a multiprocessing.Pool would wait forever here
def test_a_dead_worker_is_named_not_waited_for() -> None:
    done = []
    with pytest.raises(WorkerDied, match=r"killed by signal 9\) on unit 2") as info:
        run_jobs([(i, i) for i in range(4)], _dies_on_two, 2, lambda uid, _: done.append(uid))
    assert info.value.job_id == 2 and 2 not in done
    assert multiprocessing.active_children() == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


@linux_only
@pytest.mark.timeout(180)
def test_workers_exit_promptly_when_the_parent_is_killed(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import os, time
        from genlip_lit.ingest.workers import run_jobs

        def busy(job):
            open(os.path.join({str(tmp_path)!r}, str(os.getpid())), "w").close()
            while True:  # a long unit: keeps writing until told otherwise
                with open(os.path.join({str(tmp_path)!r}, str(os.getpid())), "a") as fh:
                    fh.write(".")
                time.sleep(0.05)

        run_jobs([(i, i) for i in range(4)], busy, 2, lambda *a: None)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 150
        while len(os.listdir(tmp_path)) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.1)
        workers = [int(name) for name in os.listdir(tmp_path)]
        assert len(workers) == 2, "the workers did not start"
        parent.kill()  # kill -9: no chance to stop its workers
        parent.wait()
        killed = time.time()
        while any(_alive(pid) for pid in workers) and time.time() - killed < 10:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "workers outlived their parent by 10 s"
        assert time.time() - killed < 5
        sizes = [os.path.getsize(tmp_path / str(pid)) for pid in workers]
        time.sleep(0.5)
        assert [os.path.getsize(tmp_path / str(pid)) for pid in workers] == sizes  # nothing writes any more
    finally:
        if parent.poll() is None:
            parent.kill()
        for name in os.listdir(tmp_path):  # never leave a busy loop behind, whatever failed
            if _alive(int(name)):
                os.kill(int(name), signal.SIGKILL)
