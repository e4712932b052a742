"""`genlip optimize --output s3://bucket/prefix` (or any fsspec URL): the shards land in object storage.

    AWS_ENDPOINT_URL=... genlip optimize --input shards/*.tar --output s3://bucket/cc --max-side 512

The run itself is the local one, unchanged, in a staging folder keyed by the URL (`$GENLIP_CACHE/optimize-
staging/<hash>`): the same plan, unit-by-unit resume, counts and report. When it finishes, the shards are uploaded:
chunks first, then each split's index.json, `genlip_meta.json` last, so a reader never sees an index naming a chunk
that is not there and a dataset without its meta file is known to be unfinished. The staged chunks are then
deleted (the plan and unit records stay, so `--resume` and `--append` work from the same machine; chunks already
in the bucket are not uploaded again).

One writer per URL: a lock object (`URL/.genlip_lock`, naming host and pid) is written first (which also proves
the URL writable: a missing bucket or credentials is one line naming it) and removed at the end; a lock left by a
process on this host that no longer runs is taken over, one from another host is refused with the command that
clears it. Object stores have no atomic create-if-absent that every server supports, so two runs started within
the same second from two machines are not caught; the local staging folder's own flock covers one machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator

from genlip_lit.data.shards import LOCK_FILE, META_FILE, REPORT_FILE, SPLITS, WORK_DIR
from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage import paths as storage

OURS = {*SPLITS, META_FILE, REPORT_FILE, LOCK_FILE}  # what an upload writes under the URL


def staging_dir(url: str) -> str:
    """The local folder a run for `url` is written in before the upload (kept between runs: --resume, --append)."""
    from genlip_lit.data.datamodule import default_cache_root

    digest = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(os.path.abspath(default_cache_root()), "optimize-staging", digest)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _remote_lock(url: str) -> Iterator[None]:
    lock = storage.join(url, LOCK_FILE)
    storage.check_bucket(url)  # a missing bucket, credentials or endpoint: one line before anything is written
    if storage.isfile(lock):
        try:
            holder = storage.read_json(lock)
        except GenLIPUserError:
            holder = {}
        same_host = holder.get("host") == socket.gethostname()
        if not (same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])):
            who = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
            raise GenLIPUserError(
                f"{url} is being written by another genlip optimize ({who}): wait for it to end or stop it; if it "
                f"is dead, delete {lock} (e.g. `aws s3 rm {lock}`) and rerun"
            )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    storage.write_bytes(lock, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": stamp}).encode())
    try:
        yield
    finally:
        with contextlib.suppress(GenLIPUserError):
            storage.remove(lock)


def _check_remote_state(url: str, mode: str, stage: str) -> None:
    """Refuse what a local output would refuse, naming the URL (the staging folder may not know the bucket)."""
    present = set(storage.listdir(url)) - {LOCK_FILE}
    complete = META_FILE in present
    staged = os.path.isdir(os.path.join(stage, WORK_DIR)) or os.path.isfile(os.path.join(stage, META_FILE))
    if mode == "overwrite":
        foreign = sorted(present - OURS)
        if foreign:
            raise GenLIPUserError(f"--overwrite: {url} holds objects genlip optimize did not write ({foreign[:4]}); "
                                  "refusing to delete them")
        for name in sorted(present):
            storage.remove(storage.join(url, name))
        shutil.rmtree(stage, ignore_errors=True)
        return
    if mode in ("resume", "append") and present and not staged:
        raise GenLIPUserError(
            f"--{mode}: {url} was written from another machine or its staging folder {stage} is gone: "
            f"{mode} from the machine that wrote it, or write a new prefix (--overwrite replaces it)"
        )
    if mode == "new" and present:
        what = "already holds a dataset" if complete else "is not empty"
        raise GenLIPUserError(f"{url} {what}: choose another prefix, or pass --overwrite to replace it"
                              f"{' (--append adds inputs)' if complete else ''}")
    if mode == "new" and os.path.isfile(os.path.join(stage, META_FILE)):  # finished, but the bucket lost it
        shutil.rmtree(stage, ignore_errors=True)


def upload(stage: str, url: str) -> int:
    """Copy a finished local dataset to `url`: chunks, then indexes, then the report and meta file. Chunks the
    bucket already holds at the same size are skipped; staged chunks are deleted once uploaded. Returns the number
    of files sent."""
    fs, inner = storage._fs(url)
    chunks, indexes = [], []
    for split in SPLITS:
        folder = os.path.join(stage, split)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            (indexes if name == "index.json" else chunks).append(os.path.join(split, name))
    last = [name for name in (REPORT_FILE, META_FILE) if os.path.isfile(os.path.join(stage, name))]
    with storage.storage_errors(url):
        fs.invalidate_cache()
        there = {p[len(inner.rstrip("/")) + 1:]: info.get("size") for p, info in
                 fs.find(inner, detail=True).items()} if fs.exists(inner) else {}
    sent = 0
    for rel in [*chunks, *indexes, *last]:
        local = os.path.join(stage, rel)
        if rel in chunks and there.get(rel) == os.path.getsize(local):
            continue
        storage.upload_file(local, storage.join(url, rel))
        sent += 1
    for rel in chunks:  # the bucket holds them now; the plan and unit records stay for --resume/--append
        os.remove(os.path.join(stage, rel))
    return sent


def unfinished_upload(url: str, stage: str) -> bool:
    """The staging folder holds a finished dataset that the URL does not (its meta file, uploaded last, is missing)."""
    return os.path.isfile(os.path.join(stage, META_FILE)) and not storage.isfile(storage.join(url, META_FILE))


@contextlib.contextmanager
def remote_output(url: str, mode: str) -> Iterator[str | None]:
    """Hold `url` for one optimize run in `mode` (new | overwrite | resume | append): yields the staging folder to
    write the dataset into; uploads it when the block ends without error. Messages from the run that name the
    staging folder name the URL instead. Yields None when there is nothing to run: `--resume` of a run that
    finished but whose upload stopped part-way (only the upload is redone)."""
    stage = staging_dir(url)
    with _remote_lock(url):
        _check_remote_state(url, mode, stage)
        if mode == "resume" and unfinished_upload(url, stage):
            upload(stage, url)
            yield None
            return
        try:
            yield stage
        except GenLIPUserError as err:
            raise type(err)(str(err).replace(stage, url)) from err.__cause__
        upload(stage, url)
