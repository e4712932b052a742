"""`genlip optimize`: turn a caption source into litdata shards (`train/`, `val/`) plus `genlip_meta.json`.

    genlip optimize --input shards/{00000..00099}.tar --output data/cc3m --max-side 512
    genlip optimize --source synthetic --output data/shapes --num-samples 20000

Argument parsing and orchestration only: real corpora go through `genlip_lit.ingest.corpus`, the embedded
synthetic data through `genlip_lit.data.shards`. Built-in generators register in `SOURCES`. Either way the
output directory is locked for the run; a corpus run that stops early (Ctrl-C, SIGTERM, a dead worker) names the
exact command that finishes it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from genlip_lit.data.shards import DEFAULT_CHUNK_BYTES, default_val_samples, optimize_synthetic
from genlip_lit.data.synthetic import SceneConfig
from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.cleaning import DEFAULT_MAX_CAPTION_CHARS, DEFAULT_MAX_PIXELS, ImagePolicy
from genlip_lit.ingest.corpus import IngestOptions, optimize_corpus, summary_line
from genlip_lit.ingest.layouts import FORMATS, open_source
from genlip_lit.ingest.output_lock import output_lock
from genlip_lit.ingest.safe_read import DEFAULT_MAX_BYTES, ReadLimits, parse_bytes


def _run_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    try:
        scene = SceneConfig(
            image_size=args.image_size,
            patch_size=args.patch_size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            word_prob=args.word_prob,
            max_image_size=args.max_image_size,
            word_font_px=args.word_font_px,
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


# built-in generator name -> writer (real corpora come in through --input)
SOURCES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"synthetic": _run_synthetic}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genlip optimize",
        description="Write an image-caption corpus (or the embedded synthetic data) as litdata shards.",
        epilog="Examples:\n"
        "  genlip optimize --input shards/{00000..00099}.tar --output data/cc --max-side 512\n"
        "  genlip optimize --input recap/*.parquet --caption-field re_caption org_caption --output data/recap\n"
        "  genlip optimize --source synthetic --output data/shapes --num-samples 20000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", required=True, help="output directory (gets train/, val/, genlip_meta.json)")
    p.add_argument("--num-workers", type=int, default=None, help="worker processes (default: all cores; 1 for synthetic)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace what genlip optimize wrote in --output")
    mode.add_argument("--append", action="store_true", help="add --input to the finished dataset in --output")
    mode.add_argument("--resume", action="store_true", help="finish an interrupted run (same command otherwise)")

    real = p.add_argument_group("real corpora")
    real.add_argument("--input", nargs="+", metavar="SRC", help="files, folders, globs or {000..099} ranges")
    real.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="input layout (default: auto)")
    real.add_argument(
        "--caption-field", nargs="+", metavar="NAME",
        help="caption column(s)/key(s), first non-empty wins (webdataset/folder: 'txt' = the .txt sidecar, "
        "other names = keys of the .json sidecar; default: txt, or the first of caption/text/txt)",
    )
    real.add_argument("--label-field", default=None, help="integer class label column/key (webdataset: .cls default)")
    real.add_argument("--image-field", default=None, help="image column (parquet) or path column (manifest)")
    real.add_argument("--classes", default=None, help="text file of class names, one per line, for string labels")
    real.add_argument("--max-side", type=int, default=None, help="shrink so the longer side is at most PX")
    real.add_argument("--min-side", type=int, default=16, help="skip images with a shorter side below PX (16)")
    real.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images (bombs)")
    real.add_argument("--image-format", default="jpeg", choices=["jpeg", "png", "webp"], help="re-encoding format")
    real.add_argument("--quality", type=int, default=95, help="jpeg/webp quality (95)")
    real.add_argument("--val-fraction", type=float, default=0.01, help="share of images held out as val (0.01)")
    real.add_argument("--chunk-bytes", default=DEFAULT_CHUNK_BYTES, help="litdata chunk size (64MB)")
    real.add_argument(
        "--max-bytes", default=f"{DEFAULT_MAX_BYTES // 2**20}MiB", metavar="SIZE",
        help="skip any image, sidecar or tar member larger than this, judged before reading it (64MiB)",
    )
    real.add_argument(
        "--allow-outside", action="store_true",
        help="read symlinks and manifest/parquet paths that lead outside the input folders (refused by default)",
    )
    real.add_argument(
        "--max-caption-chars", type=int, default=DEFAULT_MAX_CAPTION_CHARS, metavar="N",
        help=f"cut longer captions, counting them in the report ({DEFAULT_MAX_CAPTION_CHARS}; 0: no limit)",
    )

    syn = p.add_argument_group("embedded synthetic data")
    syn.add_argument("--source", default=None, help="generate a built-in dataset: synthetic (the default without --input)")
    syn.add_argument("--num-samples", type=int, default=None, help="synthetic: number of train samples")
    syn.add_argument(
        "--val-samples", type=int, default=None, help="synthetic: number of val samples (default: 2%%, min 200)"
    )
    syn.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed (val uses a disjoint stream)")
    syn.add_argument("--image-size", type=int, default=64, help="synthetic: image side in pixels")
    syn.add_argument("--patch-size", type=int, default=8, help="synthetic: patch side of the label maps")
    syn.add_argument("--min-objects", type=int, default=1, help="synthetic: fewest objects per scene")
    syn.add_argument("--max-objects", type=int, default=3, help="synthetic: most objects per scene")
    syn.add_argument("--word-prob", type=float, default=0.0, help="synthetic: probability of a rendered word")
    syn.add_argument(
        "--max-image-size",
        type=int,
        default=None,
        help="synthetic: variable sizes / aspect ratios: width and height each a multiple of --patch-size "
        "in [--image-size, this] (default: square --image-size scenes)",
    )
    syn.add_argument(
        "--word-font-px",
        type=int,
        default=None,
        help="synthetic: draw the word at this pixel size, e.g. 10 (default: a quarter of the shorter side)",
    )
    return p


def _read_classes(path: str | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            names = tuple(line.strip() for line in fh if line.strip())
    except OSError as exc:
        raise GenLIPUserError(f"--classes {path!r}: {exc}") from exc
    if len(set(names)) != len(names):
        raise GenLIPUserError(f"--classes {path!r} lists a class name twice")
    return names


def run_corpus(args: argparse.Namespace, resume_command: str | None = None) -> dict[str, Any]:
    """`genlip optimize --input ...`: returns the report (also written to `--output`)."""
    try:
        policy = ImagePolicy(
            max_side=args.max_side,
            min_side=args.min_side,
            max_pixels=args.max_pixels,
            image_format=args.image_format,
            quality=args.quality,
        )
    except ValueError as exc:
        raise GenLIPUserError(f"invalid image options: {exc}") from exc
    options = IngestOptions(
        policy=policy,
        val_fraction=args.val_fraction,
        class_names=_read_classes(args.classes),
        chunk_bytes=str(args.chunk_bytes),
        max_caption_chars=args.max_caption_chars or None,
    )
    try:
        limits = ReadLimits(max_bytes=parse_bytes(args.max_bytes), allow_outside=args.allow_outside)
    except ValueError as exc:
        raise GenLIPUserError(f"--max-bytes: {exc}") from exc
    source = open_source(
        args.input,
        args.format,
        caption_fields=args.caption_field,
        label_field=args.label_field,
        image_field=args.image_field,
        limits=limits,
    )
    mode = "overwrite" if args.overwrite else "append" if args.append else "resume" if args.resume else "new"
    workers = args.num_workers if args.num_workers is not None else (os.cpu_count() or 1)
    return optimize_corpus(source, args.output, options, num_workers=workers, mode=mode, progress=True,
                           resume_command=resume_command)


MODE_FLAGS = ("--overwrite", "--append", "--resume")


def resume_command(argv: list[str], parser: argparse.ArgumentParser) -> str:
    """The command line that finishes the run `argv` starts: the same arguments, --resume instead of a mode flag
    (argparse accepts abbreviations, so `--over` counts as --overwrite)."""
    options = [o for o in parser._option_string_actions if o.startswith("--")]
    kept = []
    for token in argv:
        name = token.split("=", 1)[0]
        if name.startswith("--") and len(name) > 2:
            matches = [o for o in options if o.startswith(name)]
            full = name if name in options else matches[0] if len(matches) == 1 else None
            if full in MODE_FLAGS:
                continue
        kept.append(token)
    return shlex.join(["genlip", "optimize", *kept, "--resume"])


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM (kill, a scheduler's preemption) stops the run like Ctrl-C: workers stopped, finish command said."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def main(argv: list[str] | None = None) -> int:
    """CLI entry; `argv` excludes the program name (a leading "optimize" is accepted and dropped)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["optimize"]:
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    out = os.path.abspath(os.path.expanduser(args.output))
    if args.input and args.source:
        raise GenLIPUserError("give either --input (a corpus) or --source synthetic, not both")
    if args.input:
        with _sigterm_as_interrupt():
            report = run_corpus(args, resume_command(argv, parser))
        print(summary_line(report, out))
        return 0
    if args.source is None and args.num_samples is None:
        raise GenLIPUserError("nothing to read: pass --input SRC [SRC ...] (or --num-samples N for synthetic data)")
    args.source = args.source or "synthetic"
    if args.source not in SOURCES:
        raise GenLIPUserError(
            f"--source {args.source!r}: only 'synthetic' is built in; real corpora come in through --input"
        )
    if args.append or args.resume:
        raise GenLIPUserError("--append and --resume apply to --input corpora; synthetic data regenerates quickly")
    if args.num_samples is None or args.num_samples < 1:
        raise GenLIPUserError(f"--source synthetic needs --num-samples of at least 1, got {args.num_samples}")
    if args.num_workers is None:
        args.num_workers = 1
    with output_lock(out):
        meta = SOURCES[args.source](args)
    print(
        f"wrote {meta['num_train']} train + {meta['num_val']} val samples ({args.source}) to "
        f"{os.path.join(out, 'train')} and {os.path.join(out, 'val')} in {meta['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
