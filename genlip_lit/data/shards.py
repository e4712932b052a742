"""The on-disk form of a genlip dataset (litdata shards in `train/` and `val/`, `genlip_meta.json` written last),
`write_shards` (the litdata writer), and the embedded synthetic data written that way
(`genlip optimize --source synthetic`, and the datamodule's synthetic cache).

Each synthetic sample is ``{"image": PNG bytes, "caption": str, "key": str, "label": int}`` plus ``"patch_shape"``
and ``"patch_color"`` (uint8 [H / patch, W / patch] per-patch labels; their shape varies per sample with
`--max-image-size`). Real corpora are written by `genlip_lit.ingest.corpus` in the same form. Images stay
encoded so a corrupt one still fails (and is skipped) at read time.

Writing takes a while (the quickstart's 20,000 scenes: 35-50 s on 2 cores), so `optimize_synthetic` reports its
progress (`genlip_lit.console.progress`: counts, rate and ETA; plain lines in a log file). litdata's workers run in
other processes (forked on Linux, spawned elsewhere), so each worker leaves its count in a small file that a
thread of the parent sums (`write_shards(on_count=...)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import io
import json
import math
import multiprocessing
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from genlip_lit.console.progress import progress
from genlip_lit.data import world
from genlip_lit.data.synthetic import SceneConfig, class_names, generate_scene
from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import write_json

META_FILE = "genlip_meta.json"  # written last: its presence marks a complete dataset
SPLITS = ("train", "val")
WORK_DIR = ".genlip_work"  # `genlip optimize --input`'s plan and finished units, for --resume and --append
PLAN_FILE = "plan.json"
REPORT_FILE = "genlip_report.json"
LOCK_FILE = ".genlip_lock"  # held by the `genlip optimize` writing the directory

VAL_SEED_OFFSET = 1_000_003  # val scenes come from another seed stream, so they are held out
DEFAULT_CHUNK_BYTES = "64MB"


def encode_png(image: Any) -> bytes:
    """PIL image -> PNG bytes (lossless, so label maps stay aligned with exact object colours)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # shards are small anyway; favour write speed
    return buffer.getvalue()


def synthetic_sample(index: int, seed: int, scene: SceneConfig | world.WorldConfig) -> dict[str, Any]:
    """One stored sample of the embedded dataset, the shapes world or the rich one by the config's type (top
    level, so litdata workers can pickle it)."""
    rich = isinstance(scene, world.WorldConfig)
    s = world.generate_world_scene(seed, index, scene) if rich else generate_scene(seed, index, scene)  # type: ignore[arg-type]
    return {
        "image": encode_png(s.image),
        "caption": s.caption,
        "key": f"{seed}/{index}",
        "label": int(s.label),
        "patch_shape": np.ascontiguousarray(s.patch_shape, dtype=np.uint8),
        "patch_color": np.ascontiguousarray(s.patch_color, dtype=np.uint8),
    }


@contextlib.contextmanager
def _keep_start_method() -> Iterator[None]:
    """Undo litdata's `multiprocessing.set_start_method(..., force=True)`.

    litdata forces its start method (spawn by default) on the whole process; left in place, every later
    DataLoader spawns its workers and starts ~40x slower.
    """
    before = multiprocessing.get_start_method(allow_none=True)
    try:
        yield
    finally:
        if multiprocessing.get_start_method(allow_none=True) != before:
            multiprocessing.set_start_method(before, force=True)


class _Counted:
    """`fn` that leaves its process's sample count in `directory` (one file per worker, rewritten at most every
    `every_s` seconds). A file, not a shared-memory counter: this object reaches spawned workers pickled, and
    multiprocessing's shared values refuse to be pickled outside process creation."""

    def __init__(self, fn: Callable[[int], Any], directory: str, every_s: float = 0.5) -> None:
        self.fn, self.directory, self.every_s = fn, directory, every_s
        self._count, self._written_at = 0, 0.0

    def __call__(self, index: int) -> Any:
        sample = self.fn(index)
        self._count += 1
        now = time.monotonic()
        if now - self._written_at >= self.every_s:
            self._written_at = now
            path = os.path.join(self.directory, str(os.getpid()))
            with open(f"{path}.tmp", "w", encoding="utf-8") as fh:
                fh.write(str(self._count))
            os.replace(f"{path}.tmp", path)  # the reader never sees half a number
        return sample


def _counted_so_far(directory: str) -> int:
    total = 0
    for name in os.listdir(directory):
        if name.isdigit():
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as fh:
                    total += int(fh.read() or 0)
            except (OSError, ValueError):
                pass
    return total


@contextlib.contextmanager
def _watched(fn: Callable[[int], Any], on_count: Callable[[int], None] | None,
             every_s: float = 0.5) -> Iterator[Callable[[int], Any]]:
    """`fn` counted by its workers, and a parent thread passing the running total to `on_count`."""
    if on_count is None:
        yield fn
        return
    directory = tempfile.mkdtemp(prefix="genlip-count-")
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every_s):
            on_count(_counted_so_far(directory))

    thread = threading.Thread(target=watch, name="genlip-shard-count", daemon=True)
    thread.start()
    try:
        yield _Counted(fn, directory, every_s)
    finally:
        stop.set()
        thread.join()
        shutil.rmtree(directory, ignore_errors=True)


def write_shards(
    fn: Callable[[int], dict[str, Any]],
    num_samples: int,
    output_dir: str,
    num_workers: int = 1,
    chunk_bytes: str | int = DEFAULT_CHUNK_BYTES,
    on_count: Callable[[int], None] | None = None,
) -> None:
    """Write samples `fn(0) .. fn(num_samples - 1)` as litdata shards into `output_dir`.

    `on_count(n)`: called from a thread about twice a second with the samples written so far, and once with
    `num_samples` at the end.
    """
    import litdata

    kwargs: dict[str, Any] = {}
    params = inspect.signature(litdata.optimize).parameters
    # fork starts workers fast and needs nothing pickled; elsewhere (macOS) keep litdata's default
    if "start_method" in params and sys.platform.startswith("linux"):
        kwargs["start_method"] = "fork"
    if "keep_data_ordered" in params:
        kwargs["keep_data_ordered"] = True  # same shard layout on every run with the same worker count
    if "verbose" in params:
        kwargs["verbose"] = False
    with _keep_start_method(), _watched(fn, on_count) as counted:
        litdata.optimize(
            fn=counted,
            inputs=list(range(num_samples)),
            output_dir=output_dir,
            chunk_bytes=chunk_bytes,
            num_workers=max(1, num_workers),
            **kwargs,
        )
    if on_count is not None:
        on_count(num_samples)


def _prepare_output(output_dir: str, overwrite: bool) -> None:
    """Refuse to mix with an existing dataset; with `overwrite`, remove only what optimize writes."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise GenLIPUserError(f"output {output_dir!r} exists and is not a directory")
    if os.path.isdir(output_dir) and set(os.listdir(output_dir)) - {LOCK_FILE}:
        if not overwrite:
            raise GenLIPUserError(
                f"output directory {output_dir!r} is not empty: choose another path or pass --overwrite"
            )
        for name in (*SPLITS, META_FILE):
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(output_dir, exist_ok=True)


def optimize_synthetic(
    output_dir: str,
    num_train: int,
    num_val: int,
    seed: int = 0,
    scene: SceneConfig | world.WorldConfig = SceneConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    num_workers: int = 1,
    overwrite: bool = False,
    chunk_bytes: str | int = DEFAULT_CHUNK_BYTES,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write the embedded synthetic dataset as litdata shards; returns the metadata written next to them.

    `show_progress`: report `synthetic data: 4,200/21,000 samples (20.0%), ..., ETA 0:31` (genlip_lit.console.progress;
    a stage of the command's progress when one is open)."""
    if num_train < 1 or num_val < 1:
        raise GenLIPUserError(f"need at least one train and one val sample, got {num_train} and {num_val}")
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    _prepare_output(output_dir, overwrite)
    start = time.perf_counter()
    val_seed = seed + VAL_SEED_OFFSET
    bar = progress(total=num_train + num_val, description="synthetic data", unit="samples",
                   percent_step=10) if show_progress else None
    with bar or contextlib.nullcontext():
        done = 0
        for split, n, split_seed in (("train", num_train, seed), ("val", num_val, val_seed)):
            fn = functools.partial(synthetic_sample, seed=split_seed, scene=scene)
            on_count = None if bar is None else functools.partial(_advance_to, bar, done)
            write_shards(fn, n, os.path.join(output_dir, split), num_workers=num_workers, chunk_bytes=chunk_bytes,
                         on_count=on_count)
            done += n
    meta = {
        "source": "synthetic",
        **({"world": "rich"} if isinstance(scene, world.WorldConfig) else {}),
        "format_version": 1,
        "fields": ["image", "caption", "key", "label", "patch_shape", "patch_color"],
        "scene": dataclasses.asdict(scene),
        "seed": seed,
        "val_seed": val_seed,
        "num_train": num_train,
        "num_val": num_val,
        "class_names": world.class_names() if isinstance(scene, world.WorldConfig) else class_names(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    # written last: its presence marks a complete dataset
    write_json(os.path.join(output_dir, META_FILE), meta)
    return meta


def _advance_to(bar: Any, before: int, count: int) -> None:
    bar.update(completed=before + count)


def default_val_samples(num_train: int) -> int:
    """About 2% of the train size, at least 200, so val metrics are not pure noise."""
    return max(200, math.ceil(0.02 * num_train))


def unfinished_dataset(data_dir: str) -> str | None:
    """What is wrong with a `genlip optimize --input` output that is not a complete dataset (None: nothing seen).

    Read from the files the optimize run leaves (no import of the ingestion code): the plan names the exact
    command that finishes an interrupted run.
    """
    plan_path = os.path.join(data_dir, WORK_DIR, PLAN_FILE)
    if not os.path.exists(plan_path) or os.path.exists(os.path.join(data_dir, META_FILE)):
        return None
    try:
        with open(os.path.join(data_dir, REPORT_FILE), encoding="utf-8") as fh:
            if json.load(fh).get("kept_total") == 0:
                return (f"holds no samples: `genlip optimize` skipped every one (see {REPORT_FILE} there); fix the "
                        "inputs or options and rerun it with --overwrite")
    except (OSError, ValueError):
        pass
    try:
        with open(plan_path, encoding="utf-8") as fh:
            plan = json.load(fh)
    except (OSError, ValueError):
        plan = {}
    return f"holds an unfinished `genlip optimize` run: finish it with {finish_command(plan)}"


def finish_command(plan: dict[str, Any]) -> str:
    """The command that finishes the unfinished run of an optimize plan, quoted for a message."""
    command, cwd = plan.get("resume_command"), plan.get("resume_cwd")
    if not command:
        return "the same `genlip optimize` command plus --resume"
    if cwd and os.path.abspath(cwd) != os.getcwd():  # relative paths in it mean what they meant there
        command = f"cd {shlex.quote(cwd)} && {command}"
    return f"`{command}`"
