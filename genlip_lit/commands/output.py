"""Every command's `--output DIR`: never over a user's files, never half-written, readable like any file.

    genlip export --ckpt runs/quickstart --output encoders/quickstart               # new or empty DIR
    genlip export --ckpt runs/quickstart --output encoders/quickstart               # again: replaces its own files
    genlip export --ckpt runs/quickstart --output my_folder --overwrite             # a folder of yours: say so

The rules, the same for every command with `--output` (export, import, eval, probe, eval-res, compare,
llm-probe, caption, caption-eval):
- DIR may be new, empty, or a directory the same command wrote before: each command leaves a marker file,
  `.genlip_output.json` (command and the files it wrote), and a directory holding that command's marker is its
  own to rewrite. Any other non-empty directory is refused in one line unless `--overwrite` is given (what a
  user put there is theirs); a DIR that is a file is refused in one line.
- `staged_output` (export, import: a product that must be whole or absent): the command writes into a temporary
  directory beside DIR and only a finished, checked result is moved into place; a refusal or crash leaves DIR as
  it was. Files the command wrote before and no longer writes (e.g. an export's timm/ form) are removed; files
  it never wrote (kept with --overwrite) stay.
- `claim_output` (reports written as a run goes): the checks above, then DIR is created and marked at once, so
  a rerun after a crash is recognised as the command's own.
- A staging directory is named `.DIR.partial-HOST-PID-*`: one left behind by a process that was killed outright
  (kill -9, a lost node) on this host is removed by the next `staged_output` of the same DIR, with a line saying
  so; one of a live process, or of another host (a shared file system), is left alone.
- Files get the usual permissions (0666 / 0777 minus the umask), also where a library wrote them 0600
  (safetensors does) or the staging directory was made 0700.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import write_json

log = logging.getLogger(__name__)

MARKER = ".genlip_output.json"


def add_overwrite(parser: Any) -> None:
    from jsonargparse import ActionYesNo

    parser.add_argument("--overwrite", action=ActionYesNo, default=False, help="write into an existing non-empty "
                        "--output directory that this command did not write (its files of the same names are "
                        "replaced, others kept)")


def _marker(path: str) -> dict[str, Any] | None:
    """The marker a genlip command left in `path`, or None (absent, unreadable, or not one of ours)."""
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as fh:
            data = json.loads(fh.read(1 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def check_output(path: str, command: str, overwrite: bool = False) -> None:
    """Refuse (one line) an --output that is a file, or a non-empty directory `genlip COMMAND` did not write."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise GenLIPUserError(f"--output {path}: is a file, not a directory: name a directory (new or empty)")
    if not os.path.isdir(path) or overwrite:
        return
    try:
        entries = sorted(os.listdir(path))
    except OSError as err:
        raise GenLIPUserError(f"--output {path}: cannot read it ({err.strerror or err})") from None
    if not entries:
        return
    marker = _marker(path)
    if marker is not None and marker["command"] == command:
        return
    writer = f" (written by genlip {marker['command']})" if marker is not None else ""
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise GenLIPUserError(f"--output {path}: the directory is not empty ({shown}){writer} and genlip {command} did "
                          "not write it: choose a new directory, or pass --overwrite to write into it")


def _write_marker(directory: str, command: str, files: list[str]) -> None:
    write_json(os.path.join(directory, MARKER), {"command": command, "files": files}, indent=1)


def claim_output(path: str, command: str, overwrite: bool = False) -> str:
    """Check `path` (see check_output), create it and mark it as `command`'s; returns `path`."""
    check_output(path, command, overwrite)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise GenLIPUserError(f"--output {path}: cannot create it ({err.strerror or err})") from None
    previous = _marker(path)
    if previous is None or previous["command"] != command:
        _write_marker(path, command, [])
    return path


def normal_permissions(root: str) -> None:
    """Files 0666 and directories 0777 minus the process umask, below and including `root`."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                os.chmod(full, 0o666 & ~mask)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def staged_output(path: str, command: str, overwrite: bool = False) -> Iterator[str]:
    """A temporary directory beside `path` to write into; moved into place only when the block finishes.

    Checked first (check_output). An exception in the block removes the temporary directory and leaves `path`
    untouched (not even created)."""
    check_output(path, command, overwrite)
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)  # (a link: its folder)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_abandoned_staging(target)
        staging = tempfile.mkdtemp(prefix=f"{_staging_prefix(target)}{socket.gethostname()}-{os.getpid()}-",
                                   dir=parent)
    except OSError as err:
        raise GenLIPUserError(f"--output {path}: cannot create it ({err.strerror or err})") from None
    try:
        yield staging
        written = sorted(os.listdir(staging))
        _write_marker(staging, command, written)
        normal_permissions(staging)
        _publish(staging, target, command)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _staging_prefix(target: str) -> str:
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.partial-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_abandoned_staging(target: str) -> list[str]:
    """Remove the staging directories of `target` left by processes of this host that no longer run (a kill -9
    during an export); returns their paths. Another host's (a shared file system) or a live process's stay."""
    prefix = _staging_prefix(target)
    here = f"{prefix}{socket.gethostname()}-"
    removed = []
    for path in sorted(glob.glob(glob.escape(here) + "*")):
        pid = path[len(here):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.warning("removed %s: the staging folder of an interrupted run (process %s is gone)", path, pid)
    return removed


def _publish(staging: str, target: str, command: str) -> None:
    """Move the staged files into `target`: a rename when it is new or empty, else file by file (replacing
    the same names, and removing what this command wrote there last time and does not write now)."""
    if not os.path.isdir(target) or not os.listdir(target):
        if os.path.isdir(target):
            os.rmdir(target)
        os.rename(staging, target)
        return
    previous = _marker(target)
    stale = set(previous.get("files") or []) if previous is not None and previous["command"] == command else set()
    for name in os.listdir(staging):
        stale.discard(name)
        if name != MARKER:
            _remove(os.path.join(target, name))
            os.rename(os.path.join(staging, name), os.path.join(target, name))
    for name in stale:
        if isinstance(name, str) and name and os.sep not in name and name not in (".", ".."):
            _remove(os.path.join(target, name))
    os.replace(os.path.join(staging, MARKER), os.path.join(target, MARKER))
