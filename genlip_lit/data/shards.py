"""The on-disk form of a genlip dataset (litdata shards in `train/` and `val/`, `genlip_meta.json` written last),
`write_shards` (the litdata writer), and the embedded synthetic data written that way
(`genlip optimize --source synthetic`, and the datamodule's synthetic cache).

Each synthetic sample is ``{"image": PNG bytes, "caption": str, "key": str, "label": int}`` plus ``"patch_shape"``
and ``"patch_color"`` (uint8 [H / patch, W / patch] per-patch labels; their shape varies per sample with
`--max-image-size`). Real corpora are written by `genlip_lit.ingest.corpus` in the same form. Images stay
encoded so a corrupt one still fails (and is skipped) at read time.
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
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from genlip_lit.data.synthetic import SceneConfig, class_names, generate_scene
from genlip_lit.errors import GenLIPUserError

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


def synthetic_sample(index: int, seed: int, scene: SceneConfig) -> dict[str, Any]:
    """One stored sample of the embedded dataset (top level, so litdata workers can pickle it)."""
    s = generate_scene(seed, index, scene)
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


def write_shards(
    fn: Callable[[int], dict[str, Any]],
    num_samples: int,
    output_dir: str,
    num_workers: int = 1,
    chunk_bytes: str | int = DEFAULT_CHUNK_BYTES,
) -> None:
    """Write samples `fn(0) .. fn(num_samples - 1)` as litdata shards into `output_dir`."""
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
    with _keep_start_method():
        litdata.optimize(
            fn=fn,
            inputs=list(range(num_samples)),
            output_dir=output_dir,
            chunk_bytes=chunk_bytes,
            num_workers=max(1, num_workers),
            **kwargs,
        )


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
    scene: SceneConfig = SceneConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    num_workers: int = 1,
    overwrite: bool = False,
    chunk_bytes: str | int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """Write the embedded synthetic dataset as litdata shards; returns the metadata written next to them."""
    if num_train < 1 or num_val < 1:
        raise GenLIPUserError(f"need at least one train and one val sample, got {num_train} and {num_val}")
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    _prepare_output(output_dir, overwrite)
    start = time.perf_counter()
    val_seed = seed + VAL_SEED_OFFSET
    for split, n, split_seed in (("train", num_train, seed), ("val", num_val, val_seed)):
        fn = functools.partial(synthetic_sample, seed=split_seed, scene=scene)
        write_shards(fn, n, os.path.join(output_dir, split), num_workers=num_workers, chunk_bytes=chunk_bytes)
    meta = {
        "source": "synthetic",
        "format_version": 1,
        "fields": ["image", "caption", "key", "label", "patch_shape", "patch_color"],
        "scene": dataclasses.asdict(scene),
        "seed": seed,
        "val_seed": val_seed,
        "num_train": num_train,
        "num_val": num_val,
        "class_names": class_names(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    # written last: its presence marks a complete dataset
    with open(os.path.join(output_dir, META_FILE), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
    return meta


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
