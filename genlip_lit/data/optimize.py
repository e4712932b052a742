"""`genlip optimize`: turn a caption source into litdata shards (`train/`, `val/`) plus `genlip_meta.json`.

    genlip optimize --source synthetic --output data/shapes --num-samples 20000

Each sample is ``{"image": PNG bytes, "caption": str, "label": int, "patch_shape": uint8 [g, g],
"patch_color": uint8 [g, g]}``. Images stay encoded so a corrupt one fails (and is skipped) at read time.
New sources register in `SOURCES`: a function from parsed CLI arguments to the summary dict.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from genlip_lit.data.synthetic import SceneConfig, class_names, generate_scene
from genlip_lit.errors import GenLIPUserError

META_FILE = "genlip_meta.json"
SPLITS = ("train", "val")
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
    if os.path.isdir(output_dir) and os.listdir(output_dir):
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
        "fields": ["image", "caption", "label", "patch_shape", "patch_color"],
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


def _run_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    try:
        scene = SceneConfig(
            image_size=args.image_size,
            patch_size=args.patch_size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            word_prob=args.word_prob,
        )
    except ValueError as exc:  # SceneConfig validates its own fields
        raise GenLIPUserError(f"invalid scene options: {exc}") from exc
    num_val = args.val_samples if args.val_samples is not None else default_val_samples(args.num_samples)
    return optimize_synthetic(
        args.output,
        num_train=args.num_samples,
        num_val=num_val,
        seed=args.seed,
        scene=scene,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
    )


# source name -> writer; real corpora (img2dataset tars, parquet, folders) will add entries here
SOURCES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"synthetic": _run_synthetic}


def default_val_samples(num_train: int) -> int:
    """About 2% of the train size, at least 200, so val metrics are not pure noise."""
    return max(200, math.ceil(0.02 * num_train))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genlip optimize", description="Write a caption source as litdata shards."
    )
    p.add_argument("--source", default="synthetic", help="data source (default: synthetic)")
    p.add_argument("--output", required=True, help="output directory (gets train/, val/, genlip_meta.json)")
    p.add_argument("--num-samples", type=int, required=True, help="number of train samples")
    p.add_argument(
        "--val-samples", type=int, default=None, help="number of val samples (default: 2%%, min 200)"
    )
    p.add_argument("--seed", type=int, default=0, help="dataset seed (val uses a disjoint stream)")
    p.add_argument("--image-size", type=int, default=64, help="synthetic: image side in pixels")
    p.add_argument("--patch-size", type=int, default=8, help="synthetic: patch side of the label maps")
    p.add_argument("--min-objects", type=int, default=1, help="synthetic: fewest objects per scene")
    p.add_argument("--max-objects", type=int, default=3, help="synthetic: most objects per scene")
    p.add_argument("--word-prob", type=float, default=0.0, help="synthetic: probability of a rendered word")
    p.add_argument("--num-workers", type=int, default=1, help="writer processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --output")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry; `argv` excludes the program name (a leading "optimize" is accepted and dropped)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["optimize"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.source not in SOURCES:
        raise GenLIPUserError(f"--source {args.source!r}: only 'synthetic' is supported so far")
    if args.num_samples < 1:
        raise GenLIPUserError(f"--num-samples must be at least 1, got {args.num_samples}")
    meta = SOURCES[args.source](args)
    out = os.path.abspath(args.output)
    print(
        f"wrote {meta['num_train']} train + {meta['num_val']} val samples ({args.source}) to "
        f"{os.path.join(out, 'train')} and {os.path.join(out, 'val')} in {meta['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
