"""Worker processes for `genlip optimize`: one unit of work at a time, and nothing left running behind.

`multiprocessing.Pool` was not enough here: a worker killed by the system (out of memory, a decoder crash) left
the pool waiting forever, and workers whose parent was killed kept writing chunks until their unit was done.
Each worker here gets its jobs through its own pipe, so the parent knows which unit a dead worker was on and
stops with an error naming it; workers exit within about a second of their parent dying (`PR_SET_PDEATHSIG` on
Linux, a parent-pid watch elsewhere) and ignore Ctrl-C, which the parent handles by stopping them all.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

PARENT_POLL_S = 0.25  # how often a worker checks that its parent is alive (where the kernel cannot tell it)
_PR_SET_PDEATHSIG = 1


class WorkerDied(Exception):
    """A worker process ended without finishing its job (killed, crashed, out of memory)."""

    def __init__(self, job_id: int, exitcode: int | None) -> None:
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        super().__init__(f"a worker process died ({how}) on unit {job_id}")
        self.job_id = job_id
        self.exitcode = exitcode


def exit_with_parent(parent_pid: int) -> None:
    """End this process as soon as `parent_pid` is no longer its parent (the parent died)."""
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGKILL when the parent dies: instant, even in the middle of a decode
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _transportable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling (with the worker's traceback as a note), else a RuntimeError."""
    trace = "".join(traceback.format_exception(exc)).rstrip()
    try:
        exc.add_note(f"in the worker process:\n{trace}")
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}\nin the worker process:\n{trace}")


def _worker_main(conn: Any, parent_pid: int, work: Callable[[Any], Any]) -> None:
    exit_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, if it installed one
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            reply = ("ok", work(job))
        except BaseException as exc:  # sent back and raised in the parent
            reply = ("error", _transportable(exc))
        conn.send(reply)


def run_jobs(
    jobs: Sequence[tuple[int, Any]],
    work: Callable[[tuple[int, Any]], Any],
    num_workers: int,
    on_result: Callable[[int, Any], None],
) -> None:
    """Run `work(job)` for every `(job_id, payload)` in `num_workers` processes; `on_result(job_id, result)` in
    the parent as each finishes. Raises the first job's exception, or `WorkerDied`; stops all workers on exit."""
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    todo = list(jobs)
    workers: list[tuple[Any, Any]] = []
    current: dict[int, tuple[int, Any] | None] = {}
    clean = False
    try:
        for _ in range(max(1, min(num_workers, len(todo)))):
            ours, theirs = ctx.Pipe()
            process = ctx.Process(target=_worker_main, args=(theirs, os.getpid(), work), daemon=True)
            process.start()
            theirs.close()
            workers.append((process, ours))

        def hand_out(index: int) -> None:
            job = todo.pop(0) if todo else None
            current[index] = job
            try:
                workers[index][1].send(job)
            except (BrokenPipeError, OSError):
                if job is not None:
                    workers[index][0].join(1.0)
                    raise WorkerDied(job[0], workers[index][0].exitcode) from None

        for index in range(len(workers)):
            hand_out(index)
        while any(job is not None for job in current.values()):
            busy = [i for i, job in current.items() if job is not None]
            waitables = [workers[i][1] for i in busy] + [workers[i][0].sentinel for i in busy]
            ready = multiprocessing.connection.wait(waitables)
            for i in busy:
                process, conn = workers[i]
                job = current[i]
                assert job is not None
                if conn in ready or conn.poll():
                    try:
                        kind, value = conn.recv()
                    except (EOFError, OSError):
                        process.join(1.0)
                        raise WorkerDied(job[0], process.exitcode) from None
                    if kind == "error":
                        raise value
                    on_result(job[0], value)
                    hand_out(i)
                elif process.sentinel in ready:
                    process.join(1.0)
                    raise WorkerDied(job[0], process.exitcode)
        clean = True
    finally:
        for process, _ in workers:
            if not clean and process.is_alive():
                process.terminate()  # the run is being abandoned: stop writing now
        for process, conn in workers:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
