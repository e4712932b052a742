"""What `genlip optimize` may open: regular files inside the input tree, no bigger than `--max-bytes`.

Everything is judged before a byte is read, from `stat` (files) or the member header (tar members), so a FIFO
named `x.jpg` (which would block the reader forever), a symlink to `/dev/zero` (an endless read) or a tar member
declaring 100 GB (a sparse member inflates to its declared size) never reaches a read. A refusal is a `Refused`
with a skip reason that the optimize report counts like any other bad sample:

    not_a_regular_file   a FIFO, device, socket or directory where a file was expected
    outside_input_root   a symlink, manifest path or parquet path that leads outside the input tree
                         (`--allow-outside` reads it)
    too_many_bytes       a file or tar member over `--max-bytes`

The input tree of an input folder is the folder; of an input file (a manifest, a parquet file, a tar shard), the
folder it is in. Symlinks are followed when they stay inside it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Iterable, Sequence

DEFAULT_MAX_BYTES = 64 * 2**20  # one image or sidecar: far above any photo, far below a memory problem
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class Refused(Exception):
    """A file that ingestion does not open; `reason` is a skip reason of the optimize report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """What readers may open (recorded in the optimize plan: a resume reads under the same limits)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    allow_outside: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")


def parse_bytes(text: str | int) -> int:
    """`64MiB`, `100MB`, `5G`, `1048576` -> bytes (KB/MB/GB are powers of 1000, KiB/MiB/GiB and K/M/G of 1024)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 64MiB, 100MB, 1G, 1048576)")
    return int(float(match.group(1)) * _UNITS[unit])


def input_roots(paths: Iterable[str]) -> tuple[str, ...]:
    """The input trees of resolved inputs: a folder is its own tree, a file's tree is its folder."""
    roots = {os.path.realpath(p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))) for p in paths}
    return tuple(sorted(roots))


def is_inside(path: str, roots: Sequence[str]) -> bool:
    """Whether `path` (after following every symlink) lies in one of `roots`."""
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def check_file(path: str, roots: Sequence[str], limits: ReadLimits, max_bytes: int | None = -1) -> int:
    """The size of `path` if ingestion may read it; raises `Refused` (and `OSError` when it does not exist).

    `max_bytes=None` skips the size cap (containers such as tar shards and parquet files are streamed, not read
    whole); the default -1 means `limits.max_bytes`.
    """
    cap = limits.max_bytes if max_bytes == -1 else max_bytes
    if not limits.allow_outside and not is_inside(path, roots):
        raise Refused("outside_input_root",
                      f"{path} leads to {os.path.realpath(path)}, outside the input tree (--allow-outside reads it)")
    info = os.stat(path)  # follows symlinks: judges what a read would reach
    if not stat.S_ISREG(info.st_mode):
        raise Refused("not_a_regular_file", f"{path} is a {_kind(info.st_mode)}")
    if cap is not None and info.st_size > cap:
        raise Refused("too_many_bytes", f"{path} has {info.st_size} bytes, over --max-bytes {cap}")
    return info.st_size


def read_file(path: str, roots: Sequence[str], limits: ReadLimits) -> bytes:
    """The bytes of `path` after `check_file`; raises `Refused` or `OSError`.

    Opened non-blocking and checked again on the open descriptor, so a file swapped for a FIFO after the check
    neither blocks nor gets read; at most `max_bytes + 1` bytes are ever read.
    """
    check_file(path, roots, limits)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused("not_a_regular_file", f"{path} is a {_kind(info.st_mode)}")
        chunks, size = [], 0
        while size <= limits.max_bytes:
            chunk = os.read(fd, min(limits.max_bytes + 1 - size, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limits.max_bytes:
        raise Refused("too_many_bytes", f"{path} grew past --max-bytes {limits.max_bytes} while being read")
    return b"".join(chunks)


def check_listed(path: str, roots: Sequence[str], limits: ReadLimits, named: bool) -> None:
    """Whether a file found in (or named as) an input may be opened as a container or listed as an image.

    A file the user named on the command line may live anywhere (they chose it), but must be a regular file;
    a file found by walking an input folder must also stay inside it. Sizes are judged when a sample is read.
    """
    check_file(path, roots, dataclasses.replace(limits, allow_outside=limits.allow_outside or named), None)
