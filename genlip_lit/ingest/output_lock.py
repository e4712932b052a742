"""One `genlip optimize` per output directory: an exclusive lock on `OUTPUT/.genlip_lock` for the whole run.

Two runs writing the same shards would interleave chunks and indexes silently. The lock is a `flock`, so the
kernel drops it when its holder dies (no stale lock after a crash or kill -9); the file keeps the holder's pid
and host so the refusal can name them. Where `fcntl` does not exist (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

from genlip_lit.data.shards import LOCK_FILE
from genlip_lit.errors import GenLIPUserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "a process that has not written its pid yet"


@contextlib.contextmanager
def output_lock(out_dir: str) -> Iterator[None]:
    """Hold the output's lock (creating the directory) or raise `GenLIPUserError` naming the holder."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise GenLIPUserError(f"output {out_dir!r} exists and is not a directory")
    created = not os.path.exists(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd = os.open(os.path.join(out_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise GenLIPUserError(f"cannot write to output {out_dir!r}: {exc.strerror or exc}") from exc
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GenLIPUserError(
                    f"{out_dir!r} is being written by another genlip optimize ({_holder(fd)}): wait for it to end "
                    "or stop it; two runs on one output would mix their shards"
                ) from None
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": stamp}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock (forked workers holding a copy have been stopped by now)
        if created and os.listdir(out_dir) == [LOCK_FILE]:  # a run refused before writing: leave no trace
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out_dir, LOCK_FILE))
                os.rmdir(out_dir)
