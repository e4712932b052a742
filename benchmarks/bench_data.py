"""Data pipeline benchmark: `genlip optimize --input` throughput and streaming throughput into batches.

    python benchmarks/bench_data.py                       # defaults: 2000 photo-sized images, 1 and 2 workers
    python benchmarks/bench_data.py --num-images 500 --workers 1 2 --layouts all --json /tmp/bench.json

Prints tables (nothing is asserted):

1. optimize   images/s of `optimize_corpus` (the engine of `genlip optimize --input`) on a generated demo corpus
              of photo-sized images (`--min-side`..`--source-max-side` px, mostly JPEG), per layout and worker count.
2. streaming  images/s from the optimized litdata shards to batched uint8 pixels + tokens through the real
              `GenLIPDataModule`, next to a BARE loader that only decodes + resizes/crops the same image bytes
              (held in memory) with a torch DataLoader of the same workers and batch size; ratio streaming/bare.
3. profile    where the time goes: per-image cost of each step of the streaming path and the bare path, measured
              in one process with one torch thread (as in a loader worker).

Timings skip the first `max(1, workers)` batches (worker start-up, first chunk open) and run over the rest of
the epoch; each measurement runs `--repeats` times and the best is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from genlip_lit.data.datamodule import BatchCollator, GenLIPDataModule, shutdown_workers
from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer
from genlip_lit.data.transforms import FixedResTransform, decode_image
from genlip_lit.ingest.cleaning import ImagePolicy
from genlip_lit.ingest.corpus import IngestOptions, optimize_corpus
from genlip_lit.ingest.demo_corpus import LAYOUTS, WRITERS, DemoSample, demo_samples
from genlip_lit.ingest.layouts import open_source


# ------------------------------------------------------------------------------------------------ helpers
def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    return "\n".join(out)


def start_method() -> str | None:
    return multiprocessing.get_start_method(allow_none=True)


def machine_info() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    import litdata

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "litdata": litdata.__version__,
        "pillow": Image.__version__,
        "cuda": torch.cuda.is_available(),
        "start_method": start_method(),
    }


# ------------------------------------------------------------------------------------------------ corpus
def _gen_part(job: tuple[int, int, int, int, int]) -> list[DemoSample]:
    offset, count, seed, min_side, max_side = job
    # keys renumbered so parts generated with different seeds do not collide
    return [dataclasses.replace(s, key=f"{offset + i:09d}")
            for i, s in enumerate(demo_samples(count, seed=seed, min_side=min_side, max_side=max_side))]


def generate_samples(num_images: int, min_side: int, max_side: int, procs: int, part: int = 250) -> list[DemoSample]:
    """Photo-sized demo samples, in parts of `part` images (seed = part number) spread over `procs` forked
    processes: the corpus depends on the arguments only, not on the machine's CPU count."""
    jobs = [(start, min(part, num_images - start), start // part, min_side, max_side)
            for start in range(0, num_images, part)]
    procs = max(1, min(procs, len(jobs)))
    if procs == 1:
        return [s for job in jobs for s in _gen_part(job)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_gen_part, jobs, chunksize=1)
    return [s for part in parts for s in part]


def write_layouts(samples: list[DemoSample], root: str, layouts: Sequence[str]) -> dict[str, str]:
    """Same as `write_demo_corpus`, but for pre-generated samples; returns {layout: --input path}."""
    written = {}
    for layout in layouts:
        result = WRITERS[layout](samples, os.path.join(root, layout))
        written[layout] = os.path.join(root, layout) if isinstance(result, list) else result
    return written


# ------------------------------------------------------------------------------------------------ 1. optimize
def bench_optimize(inputs: dict[str, str], out_root: str, workers: Sequence[int], repeats: int,
                   policy: ImagePolicy) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Best-of-`repeats` images/s of `optimize_corpus` per (layout, workers); repeats run interleaved so slow
    phases of a noisy machine spread over all settings. Returns the rows and {setting: output dir}."""
    options = IngestOptions(policy=policy)
    settings = [(layout, w) for layout in inputs for w in workers]
    best: dict[tuple[str, int], dict[str, Any]] = {}
    outputs = {f"{layout}-w{w}": os.path.join(out_root, f"{layout}-w{w}") for layout, w in settings}
    for _ in range(repeats):
        for layout, w in settings:
            source = open_source([inputs[layout]])
            t0 = time.perf_counter()
            report = optimize_corpus(source, outputs[f"{layout}-w{w}"], options, num_workers=w, mode="overwrite")
            wall = time.perf_counter() - t0
            n = report["images_this_run"]
            row = {
                "layout": layout, "workers": w, "units": report["units"], "images": n,
                "kept": report["kept_total"], "skipped": report["skipped_total"],
                "seconds": wall, "images_per_s": n / wall,
                "mb_in": report["bytes_in"] / 1e6, "mb_out": report["bytes_out"] / 1e6,
            }
            print(f"  optimize {layout:<10} workers={w}: {row['images_per_s']:7.1f} images/s "
                  f"({n} images in {wall:.2f} s)", file=sys.stderr, flush=True)
            if (layout, w) not in best or row["images_per_s"] > best[(layout, w)]["images_per_s"]:
                best[(layout, w)] = row
    return [best[k] for k in settings], outputs


# ------------------------------------------------------------------------------------------------ 2. streaming
def time_loader(make_loader: Callable[[], Any], count: Callable[[Any], int], warmup_batches: int) -> dict[str, Any]:
    """One epoch of a fresh loader: images/s after the first `warmup_batches` batches, plus start-up latency."""
    loader = make_loader()
    try:
        t_create = time.perf_counter()
        total = measured = batches = 0
        t_first = t_start = None
        for batch in loader:
            n = count(batch)
            total += n
            batches += 1
            now = time.perf_counter()
            if t_first is None:
                t_first = now - t_create
            if batches == warmup_batches:
                t_start = now
            elif batches > warmup_batches:
                measured += n
        t_end = time.perf_counter()
    finally:
        shutdown_workers(loader)
    if t_start is None or measured == 0:  # epoch shorter than the warm-up: time all of it
        t_start, measured = t_create, total
    return {"images": total, "batches": batches, "measured_images": measured, "seconds": t_end - t_start,
            "images_per_s": measured / (t_end - t_start), "first_batch_s": t_first, "epoch_s": t_end - t_create}


def resize_crop(img: Image.Image, s: int) -> Image.Image:
    """What `FixedResTransform` does before normalizing: shorter side -> s (bicubic), center crop s x s."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if min(w, h) != s:
        scale = s / min(w, h)
        img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), resample=Image.Resampling.BICUBIC)
    w, h = img.size
    if (w, h) != (s, s):
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    return img


class BareDataset(torch.utils.data.Dataset):
    """In-memory image bytes -> uint8 [3, s, s] tensors: decode + resize/crop, nothing else."""

    def __init__(self, images: list[bytes], image_size: int) -> None:
        self.images = images
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = resize_crop(decode_image(self.images[i]), self.image_size)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_stored(train_dir: str) -> list[dict[str, Any]]:
    """Every stored train sample (raw dicts: image bytes, caption, key, label), in stored order."""
    import litdata

    return [dict(raw) for raw in litdata.StreamingDataset(input_dir=train_dir)]


def make_encoder(compact: str | None, max_len: int) -> CaptionEncoder:
    return CaptionEncoder(OpenCLIPTokenizer(compact_corpus=compact), max_len=max_len)


def bench_streaming(data_dir: str, images: list[bytes], workers: Sequence[int], args: argparse.Namespace
                    ) -> list[dict[str, Any]]:
    results = []
    for w in workers:
        warmup = max(1, w)

        def make_stream(w: int = w) -> Any:
            dm = GenLIPDataModule(
                data_dir=data_dir, image_size=args.image_size, batch_size=args.batch_size, num_workers=w,
                shuffle=False, caption_encoder=make_encoder(args.compact_corpus, args.max_len),
            )
            dm.setup("fit")
            return dm.train_dataloader()

        def make_bare(w: int = w) -> Any:
            return torch.utils.data.DataLoader(
                BareDataset(images, args.image_size), batch_size=args.batch_size, num_workers=w, shuffle=False,
                persistent_workers=w > 0,
            )

        runs: dict[str, list[dict[str, Any]]] = {"streaming": [], "bare": []}
        for _ in range(args.repeats):  # interleaved, so a slow phase of the machine hits both alike
            runs["streaming"].append(time_loader(make_stream, lambda b: int(b.pixel_values.shape[0]), warmup))
            runs["bare"].append(time_loader(make_bare, lambda b: int(b.shape[0]), warmup))
            print(f"  workers={w}: streaming {runs['streaming'][-1]['images_per_s']:7.1f} images/s, "
                  f"bare {runs['bare'][-1]['images_per_s']:7.1f} images/s", file=sys.stderr, flush=True)
        stream, bare = (max(runs[k], key=lambda r: r["images_per_s"]) for k in ("streaming", "bare"))
        row = {"workers": w, "streaming": stream, "bare": bare,
               "ratio": stream["images_per_s"] / bare["images_per_s"]}
        results.append(row)
    return results


# ------------------------------------------------------------------------------------------------ 3. profile
def stack_shared(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack into shared memory, as `default_collate` does inside a DataLoader worker (no copy when sent)."""
    elem = tensors[0]
    storage = elem._typed_storage()._new_shared(sum(t.numel() for t in tensors), device=elem.device)
    out = elem.new(storage).resize_(len(tensors), *elem.shape)
    return torch.stack(tensors, out=out)


PROFILE_STEPS = (  # (step, in the streaming path, in the bare path)
    ("litdata read (raw sample dict)", True, False),
    ("decode_image (PIL)", True, True),
    ("resize shorter side + crop (bicubic)", True, True),
    ("to uint8 CHW tensor", True, True),
    ("caption encode (BPE + format)", True, False),
    ("collate: uint8 stack into shared memory", True, True),
    ("collate: captions, labels (BatchCollator rest)", True, False),
)


def bench_profile(train_dir: str, stored: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per-image cost of each step, in this process with one torch thread (as in a DataLoader worker).

    Mirrors what a loader worker does per batch. Both paths stack uint8 pixels into shared memory (what
    `default_collate` does inside a worker); the streaming path also tokenizes captions and collates text.
    Normalization to float runs after the transfer to the device (`GenLIPDataModule.on_after_batch_transfer`),
    outside the loader, and is timed on its own below the table.
    """
    import litdata

    n = min(args.profile_images, len(stored))
    samples = stored[:n]
    s, bs = args.image_size, min(args.batch_size, n)
    transform = FixedResTransform(s, train=True)
    encoder = make_encoder(args.compact_corpus, args.max_len)
    encoder.encode("warm up")  # the compact vocabulary (if any) is built on first use
    collator = BatchCollator(encoder, s)
    names = [step[0] for step in PROFILE_STEPS]

    def one_pass() -> dict[str, float]:
        t = dict.fromkeys(names, 0.0)
        clock = time.perf_counter
        t0 = clock()
        ds = litdata.StreamingDataset(input_dir=train_dir)
        for _ in zip(range(n), iter(ds)):
            pass
        t[names[0]] = clock() - t0
        for start in range(0, n - bs + 1, bs):  # whole batches only
            items, arrays = [], []
            for raw in samples[start : start + bs]:
                t0 = clock()
                img = decode_image(raw["image"])
                t1 = clock()
                img = transform._crop(transform._resize(img.convert("RGB") if img.mode != "RGB" else img))
                t2 = clock()
                chw = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
                t3 = clock()
                ids, mask = encoder.encode(str(raw["caption"]))
                t4 = clock()
                for name, dt in zip(names[1:5], (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    t[name] += dt
                arrays.append(chw)
                items.append({"pixel_values": chw, "input_ids": ids, "loss_mask": mask, "truncated": False,
                              "key": str(raw.get("key")), "caption": str(raw["caption"]),
                              "label": int(raw.get("label", -1)), "patch_shape": None, "patch_color": None})
            t0 = clock()
            stack_shared(arrays)
            t1 = clock()
            collator(items)  # its pixel stack is an ordinary one here (not in a worker): subtract a plain stack
            t2 = clock()
            torch.stack(arrays)
            t3 = clock()
            t[names[5]] += t1 - t0
            t[names[6]] += max(0.0, (t2 - t1) - (t3 - t2))
            del items, arrays
        done = (n // bs) * bs
        return {k: v / (n if k == names[0] else done) for k, v in t.items()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_pass()  # warm-up: lazy init, allocator, page cache
        passes = [one_pass() for _ in range(max(1, args.repeats))]
        batch = collator([{"pixel_values": torch.zeros(3, s, s, dtype=torch.uint8), "input_ids": [1, 2],
                           "loss_mask": [False, True], "caption": "", "label": -1, "key": "k"}] * bs)
        t0 = time.perf_counter()
        for _ in range(5):
            batch.normalized()
        normalize_us = (time.perf_counter() - t0) / (5 * bs) * 1e6
    finally:
        torch.set_num_threads(threads)
    best = {k: min(p[k] for p in passes) for k in names}
    rows = []
    sums = [0.0, 0.0]
    for name, *used in PROFILE_STEPS:
        row = {"step": name}
        for i, (col, on) in enumerate(zip(("streaming_us", "bare_us"), used)):
            row[col] = best[name] * 1e6 if on else None
            sums[i] += best[name] * 1e6 if on else 0.0
        rows.append(row)
    rows.append({"step": "total per image (in the loader)", "streaming_us": sums[0], "bare_us": sums[1]})
    rows.append({"step": "normalize to float (after transfer, CPU, 1 thread)", "streaming_us": normalize_us,
                 "bare_us": None})
    return rows


# ------------------------------------------------------------------------------------------------ main
def prepare_shards(args: argparse.Namespace, workdir: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Generate the corpus and optimize it; returns (corpus info, optimize rows, shard dir to stream)."""
    # -- corpus
    t0 = time.perf_counter()
    samples = generate_samples(args.num_images, args.min_side, args.source_max_side, procs=os.cpu_count() or 1)
    t_gen = time.perf_counter() - t0
    corpus_root = os.path.join(workdir, "corpus")
    if os.path.isdir(corpus_root):
        shutil.rmtree(corpus_root)
    t0 = time.perf_counter()
    inputs = write_layouts(samples, corpus_root, args.layouts)
    t_write = time.perf_counter() - t0
    sizes = np.array([Image.open(io.BytesIO(s.image)).size for s in samples])
    corpus = {"num_images": len(samples), "generate_s": t_gen, "write_s": t_write,
              "mean_kb": float(np.mean([len(s.image) for s in samples]) / 1e3),
              "mean_px": [float(v) for v in sizes.mean(0)],
              "formats": {e: sum(s.ext == e for s in samples) for e in ("jpg", "png", "webp")}}
    print(f"corpus: {len(samples)} images generated in {t_gen:.1f} s, written ({', '.join(args.layouts)}) "
          f"in {t_write:.1f} s under {corpus_root}", file=sys.stderr, flush=True)
    del samples

    # -- 1. optimize
    policy = ImagePolicy(max_side=args.max_side or None)
    if args.skip_optimize_bench:
        opt_layouts = {"webdataset": inputs["webdataset"]} if "webdataset" in inputs else dict(
            list(inputs.items())[:1])
        opt_results, outputs = bench_optimize(opt_layouts, os.path.join(workdir, "shards"), [1], 1, policy)
        opt_results = []
    else:
        opt_results, outputs = bench_optimize(inputs, os.path.join(workdir, "shards"), args.workers,
                                              args.repeats, policy)
    data_dir = next(iter(outputs.values()))
    return corpus, opt_results, data_dir


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-images", type=int, default=2000, help="images in the generated corpus")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    p.add_argument("--layouts", nargs="+", default=["webdataset"], choices=["all", *LAYOUTS],
                   help="corpus layouts to optimize ('all': the four)")
    p.add_argument("--min-side", type=int, default=256, help="generated images: smallest side length")
    p.add_argument("--source-max-side", type=int, default=512, help="generated images: largest side length")
    p.add_argument("--max-side", type=int, default=256,
                   help="optimize --max-side (0: keep the size); what the streamed shards then hold")
    p.add_argument("--image-size", type=int, default=224, help="streaming: training resolution")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-len", type=int, default=64, help="caption encoder max_len")
    p.add_argument("--compact-corpus", default=None,
                   help="OpenCLIPTokenizer(compact_corpus=...), e.g. 'synthetic' (default: full vocabulary)")
    p.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best is kept")
    p.add_argument("--profile-images", type=int, default=512,
                   help="images for the per-step profile (fewer than --batch-size: skip it)")
    p.add_argument("--skip-optimize-bench", action="store_true",
                   help="optimize once (1 worker) only to get shards, without the optimize table")
    p.add_argument("--data-dir", default=None,
                   help="stream from these existing shards (a `genlip optimize` output) instead of a generated "
                        "corpus: skips the corpus and the optimize table")
    p.add_argument("--workdir", default=None, help="keep corpus and shards here (default: a temp dir, deleted)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if "all" in args.layouts:
        args.layouts = list(LAYOUTS)
    if any(w < 0 for w in args.workers):
        p.error("--workers must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_all = time.perf_counter()
    info = machine_info()
    workdir = args.workdir or tempfile.mkdtemp(prefix="genlip-bench-data-")
    os.makedirs(workdir, exist_ok=True)
    methods = {"start": start_method()}
    try:
        corpus: dict[str, Any] = {}
        opt_results: list[dict[str, Any]] = []
        if args.data_dir:
            data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
        else:
            corpus, opt_results, data_dir = prepare_shards(args, workdir)
        methods["after_optimize"] = start_method()
        train_dir = os.path.join(data_dir, "train")

        # -- 2. streaming vs bare
        stored = read_stored(train_dir)
        images = [s["image"] for s in stored]
        stored_sizes = np.array([Image.open(io.BytesIO(b)).size for b in images])
        shards = {"data_dir": data_dir, "train_images": len(images),
                  "mean_kb": float(np.mean([len(b) for b in images]) / 1e3),
                  "mean_px": [float(v) for v in stored_sizes.mean(0)]}
        stream_results = bench_streaming(data_dir, images, args.workers, args)
        methods["after_streaming"] = start_method()

        # -- 3. profile
        profile_n = min(args.profile_images, len(stored))
        profile = bench_profile(train_dir, stored, args) if profile_n >= args.batch_size else []
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    wall = time.perf_counter() - t_all

    # -- report
    print()
    print(fmt_table(["machine", ""], [
        ["cpu count (affinity)", f"{info['cpu_count']} ({info['cpu_affinity']})"],
        ["python / torch / litdata / pillow",
         f"{info['python']} / {info['torch']} / {info['litdata']} / {info['pillow']}"],
        ["torch threads (main)", info["torch_threads"]],
        ["platform", info["platform"]],
        ["mp start method: start / after optimize / after streaming",
         f"{methods['start']} / {methods['after_optimize']} / {methods['after_streaming']}"],
    ]))
    rows = []
    if corpus:
        rows += [
            ["generated images", corpus["num_images"]],
            ["source size (mean w x h)", f"{corpus['mean_px'][0]:.0f} x {corpus['mean_px'][1]:.0f} px, "
                                         f"{corpus['mean_kb']:.1f} kB; {corpus['formats']}"],
            ["generate / write corpus", f"{corpus['generate_s']:.1f} s / {corpus['write_s']:.1f} s"],
        ]
    stored_note = f" (optimize --max-side {args.max_side})" if corpus else f" ({shards['data_dir']})"
    rows += [
        ["stored train samples", shards["train_images"]],
        ["stored size (mean w x h)", f"{shards['mean_px'][0]:.0f} x {shards['mean_px'][1]:.0f} px, "
                                     f"{shards['mean_kb']:.1f} kB{stored_note}"],
    ]
    print()
    print(fmt_table(["data", ""], rows))
    if opt_results:
        print()
        print(fmt_table(
            ["layout", "workers", "units", "images", "skipped", "seconds", "images/s", "MB in", "MB out"],
            [[r["layout"], r["workers"], r["units"], r["images"], r["skipped"], f"{r['seconds']:.2f}",
              f"{r['images_per_s']:.1f}", f"{r['mb_in']:.1f}", f"{r['mb_out']:.1f}"] for r in opt_results],
            title=f"1. optimize (optimize_corpus, --max-side {args.max_side}; best of {args.repeats})"))
    print()
    print(fmt_table(
        ["workers", "streaming img/s", "bare img/s", "ratio", "stream 1st batch s", "bare 1st batch s",
         "images", "measured"],
        [[r["workers"], f"{r['streaming']['images_per_s']:.1f}", f"{r['bare']['images_per_s']:.1f}",
          f"{r['ratio']:.2f}", f"{r['streaming']['first_batch_s']:.2f}", f"{r['bare']['first_batch_s']:.2f}",
          r["streaming"]["images"], r["streaming"]["measured_images"]] for r in stream_results],
        title=(f"2. streaming: GenLIPDataModule train loader vs bare decode+resize "
               f"(image_size {args.image_size}, batch {args.batch_size}; best of {args.repeats}; "
               f"first max(1, workers) batches skipped)")))
    if profile:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"

        total = profile[-2]  # in-loader total; the last row is the post-transfer normalize
        print()
        print(fmt_table(
            ["step (us per image)", "streaming", "bare"],
            [[r["step"], us(r["streaming_us"]), us(r["bare_us"])] for r in profile]
            + [["=> images/s per worker (loader work)", *(f"{1e6 / total[k]:.0f}" for k in ("streaming_us", "bare_us"))]],
            title=f"3. where the time goes: one process, 1 torch thread, {profile_n} images in batches of "
                  f"{min(args.batch_size, profile_n)}, best of {args.repeats}; predicted streaming/bare "
                  f"{total['bare_us'] / total['streaming_us']:.2f}"))
    print(f"\ntotal wall time {wall:.1f} s")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": info, "start_methods": methods, "args": vars(args), "corpus": corpus,
                       "shards": shards, "optimize": opt_results, "streaming": stream_results,
                       "profile": profile, "wall_s": wall}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
