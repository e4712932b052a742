"""`genlip optimize`: turn a caption source into litdata shards (`train/`, `val/`) plus `genlip_meta.json`.

    genlip optimize --input shards/{00000..00099}.tar --output data/cc3m --max-side 512
    genlip optimize --source synthetic --output data/shapes --num-samples 20000

Argument parsing and orchestration only: real corpora go through `genlip_lit.ingest.corpus`, the embedded
synthetic data through `genlip_lit.data.shards`. Built-in generators register in `SOURCES`. Either way the
output directory is locked for the run; a corpus run that stops early (Ctrl-C, SIGTERM, a dead worker) names the
exact command that finishes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from genlip_lit.commands.common import command_parser, parse
from genlip_lit.errors import GenLIPUserError

MODE_FLAGS = ("--overwrite", "--append", "--resume")


def _run_synthetic(args: Any) -> dict[str, Any]:
    from genlip_lit.data.shards import default_val_samples, optimize_synthetic
    from genlip_lit.data.synthetic import SceneConfig

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
SOURCES: dict[str, Callable[[Any], dict[str, Any]]] = {"synthetic": _run_synthetic}


def build_parser() -> Any:
    """The jsonargparse parser (no abbreviated flags: `--over` is an unknown option, see commands/common.py)."""
    from jsonargparse import ActionYesNo

    from genlip_lit.data.shards import DEFAULT_CHUNK_BYTES
    from genlip_lit.ingest.cleaning import DEFAULT_MAX_CAPTION_CHARS, DEFAULT_MAX_PIXELS
    from genlip_lit.ingest.layouts import FORMATS
    from genlip_lit.ingest.safe_read import DEFAULT_MAX_BYTES

    p = command_parser(
        "optimize",
        "Write an image-caption corpus (or the embedded synthetic data) as litdata shards. Examples: "
        "`genlip optimize --input shards/{00000..00099}.tar --output data/cc --max-side 512`; "
        "`genlip optimize --input recap/*.parquet --caption-field re_caption org_caption --output data/recap`; "
        "`genlip optimize --source synthetic --output data/shapes --num-samples 20000`.",
        allow_abbrev=True,
    )
    p.add_argument("--output", type=str, required=True, help="output directory (gets train/, val/, "
                   "genlip_meta.json)")
    p.add_argument("--num-workers", type=int | None, default=None, help="worker processes (null: all cores; 1 "
                   "for synthetic)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace what genlip optimize wrote in "
                   "--output")
    p.add_argument("--append", action=ActionYesNo, default=False, help="add --input to the finished dataset in "
                   "--output")
    p.add_argument("--resume", action=ActionYesNo, default=False, help="finish an interrupted run (same command "
                   "otherwise)")

    real = p.add_argument_group("real corpora")
    real.add_argument("--input", nargs="+", type=str, default=None, help="files, folders, globs or {000..099} "
                      "ranges")
    real.add_argument("--format", type=Literal[("auto", *FORMATS)], default="auto", help="input layout")
    real.add_argument(
        "--caption-field", nargs="+", type=str, default=None,
        help="caption column(s)/key(s), first non-empty wins (webdataset/folder: 'txt' = the .txt sidecar, "
        "other names = keys of the .json sidecar; null: txt, or the first of caption/text/txt)",
    )
    real.add_argument("--label-field", type=str | None, default=None, help="integer class label column/key "
                      "(webdataset: .cls default)")
    real.add_argument("--image-field", type=str | None, default=None, help="image column (parquet) or path column "
                      "(manifest)")
    real.add_argument("--classes", type=str | None, default=None, help="text file of class names, one per line, "
                      "for string labels (line i = class id i)")
    real.add_argument("--labels", type=Literal["field", "folders"], default="field",
                      help="where class labels come from: field (--label-field, webdataset's .cls) or folders (the "
                      "top folder of each image, ImageFolder style; ROOT/train + ROOT/val split folders as ImageNet)")
    real.add_argument("--labels-file", type=str | None, default=None, help="--labels folders: a file of 'IMAGE "
                      "CLASS' lines (or Kaggle's LOC_val_solution.csv) for images outside class folders, e.g. "
                      "ImageNet's flat val/")
    real.add_argument("--max-side", type=int | None, default=None, help="shrink so the longer side is at most PX")
    real.add_argument("--min-side", type=int, default=16, help="skip images with a shorter side below PX")
    real.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images (bombs)")
    real.add_argument("--image-format", type=Literal["jpeg", "png", "webp"], default="jpeg",
                      help="re-encoding format")
    real.add_argument("--quality", type=int, default=95, help="jpeg/webp quality")
    real.add_argument("--val-fraction", type=float, default=0.01, help="share of images held out as val")
    real.add_argument("--chunk-bytes", type=str, default=DEFAULT_CHUNK_BYTES, help="litdata chunk size")
    real.add_argument("--max-bytes", type=str, default=f"{DEFAULT_MAX_BYTES // 2**20}MiB",
                      help="skip any image, sidecar or tar member larger than this SIZE, judged before reading it")
    real.add_argument("--allow-outside", action=ActionYesNo, default=False,
                      help="read symlinks and manifest/parquet paths that lead outside the input folders "
                      "(refused by default)")
    real.add_argument("--max-caption-chars", type=int, default=DEFAULT_MAX_CAPTION_CHARS,
                      help="cut longer captions, counting them in the report (0: no limit)")
    real.add_argument("--caption-lines", type=Literal["first", "all"], default="first",
                      help="a .txt sidecar of several lines: its first non-blank line is the caption (first: "
                      "img2dataset writes one line; later lines are often translations or other captions), or "
                      "every line joined by spaces (all); counted and warned about either way")

    syn = p.add_argument_group("embedded synthetic data")
    syn.add_argument("--source", type=str | None, default=None, help="generate a built-in dataset: synthetic (the "
                     "default without --input)")
    syn.add_argument("--num-samples", type=int | None, default=None, help="synthetic: number of train samples")
    syn.add_argument("--val-samples", type=int | None, default=None, help="synthetic: number of val samples "
                     "(null: 2 percent of --num-samples, at least 200)")
    syn.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed (val uses a disjoint stream)")
    syn.add_argument("--image-size", type=int, default=64, help="synthetic: image side in pixels")
    syn.add_argument("--patch-size", type=int, default=8, help="synthetic: patch side of the label maps")
    syn.add_argument("--min-objects", type=int, default=1, help="synthetic: fewest objects per scene")
    syn.add_argument("--max-objects", type=int, default=3, help="synthetic: most objects per scene")
    syn.add_argument("--word-prob", type=float, default=0.0, help="synthetic: probability of a rendered word")
    syn.add_argument(
        "--max-image-size", type=int | None, default=None,
        help="synthetic: variable sizes / aspect ratios: width and height each a multiple of --patch-size "
        "in [--image-size, this] (null: square --image-size scenes)",
    )
    syn.add_argument("--word-font-px", type=int | None, default=None,
                     help="synthetic: draw the word at this pixel size, e.g. 10 (null: a quarter of the shorter "
                     "side)")
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


def run_corpus(args: Any, resume_command: str | None = None) -> dict[str, Any]:
    """`genlip optimize --input ...`: returns the report (also written to `--output`)."""
    from genlip_lit.ingest.cleaning import ImagePolicy
    from genlip_lit.ingest.corpus import IngestOptions, optimize_corpus
    from genlip_lit.ingest.layouts import open_source
    from genlip_lit.ingest.safe_read import ReadLimits, parse_bytes

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
        labels=args.labels,
        labels_file=args.labels_file,
    )
    class_names = _read_classes(args.classes)
    if class_names is None and args.labels == "folders":
        class_names = source.class_names()  # type: ignore[attr-defined]  # sorted folder names, ImageFolder's ids
    options = IngestOptions(
        policy=policy,
        val_fraction=args.val_fraction,
        class_names=class_names,
        chunk_bytes=str(args.chunk_bytes),
        max_caption_chars=args.max_caption_chars or None,
        caption_lines=args.caption_lines,
    )
    mode = "overwrite" if args.overwrite else "append" if args.append else "resume" if args.resume else "new"
    workers = args.num_workers if args.num_workers is not None else (os.cpu_count() or 1)
    return optimize_corpus(source, args.output, options, num_workers=workers, mode=mode, progress=True,
                           resume_command=resume_command)


def warn_multiline_sidecars(report: dict[str, Any]) -> None:
    """One line when .txt sidecars held several lines: how many, and what --caption-lines made of them."""
    count = report.get("multiline_sidecars", 0)
    if not count:
        return
    kept = ("kept the first line of each (--caption-lines all keeps every line, joined)"
            if report.get("caption_lines") == "first" else
            "kept every line, joined by spaces (--caption-lines first keeps only the first)")
    logging.getLogger("genlip_lit").warning(
        "%d of %d kept samples have a .txt sidecar of several lines (up to %d): %s", count, report["kept_total"],
        report.get("most_sidecar_lines", 0), kept)


def report_caption_lengths(out: str) -> None:
    """Log the captions' token lengths against the configs' max_text_len, and add them to the report file."""

    from genlip_lit.data.shards import REPORT_FILE
    from genlip_lit.ingest.caption_lengths import caption_token_lengths, summary_text

    summary = caption_token_lengths(out)
    if not summary["counted"]:
        return
    logging.getLogger("genlip_lit").info("%s", summary_text(summary))
    from genlip_lit.storage import paths as storage

    path = storage.join(out, REPORT_FILE)
    if not storage.isfile(path):  # synthetic outputs have no report file: the line is all there is
        return
    report = storage.read_json(path)
    report["caption_tokens"] = summary
    storage.write_json(path, report)


def resume_command(argv: Sequence[str]) -> str:
    """The command line that finishes the run `argv` starts: the same arguments, --resume instead of a mode flag
    (as spelt in full: the parser takes no abbreviations). A mode set in a --config file is switched off on the
    line."""
    modes = {*MODE_FLAGS, *(f"--no_{flag[2:]}" for flag in MODE_FLAGS)}
    kept = [token for token in argv if token.split("=", 1)[0] not in modes]
    from genlip_lit.commands.common import config_files

    off = ["--no_overwrite", "--no_append"] if config_files(kept) else []
    return shlex.join(["genlip", "optimize", *kept, *off, "--resume"])


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
    args = parse(parser, argv, repeatable=("--input", "--caption-field"))
    modes = [flag for flag in MODE_FLAGS if getattr(args, flag[2:])]
    if len(modes) > 1:
        raise GenLIPUserError(f"{' and '.join(modes)} exclude each other: give one (or none for a new output)")
    if args.input and args.source:
        raise GenLIPUserError("give either --input (a corpus) or --source synthetic, not both")
    from genlip_lit.storage.paths import is_remote

    if is_remote(args.output):  # s3://...: the same run in a local staging folder, uploaded when it finishes
        from genlip_lit.ingest.remote_output import remote_output

        url = args.output.rstrip("/")
        _check_source(args)
        mode = "overwrite" if args.overwrite else "append" if args.append else "resume" if args.resume else "new"
        with remote_output(url, mode) as stage:
            if stage is None:
                print(f"finished the upload of the interrupted run to {url}")
                return 0
            args.output = stage
            code = _run(args, argv, parser, url, staged=True)
        report_caption_lengths(url)  # read back from the bucket: the staging folder keeps no uploaded chunks
        return code
    return _run(args, argv, parser, os.path.abspath(os.path.expanduser(args.output)))


def _check_source(args: Any) -> None:
    """The checks on what to read that need no output (done before a remote output is locked)."""
    if args.input:
        return
    if args.source is None and args.num_samples is None:
        raise GenLIPUserError("nothing to read: pass --input SRC [SRC ...] (or --num-samples N for synthetic data)")
    if (args.source or "synthetic") not in SOURCES:
        raise GenLIPUserError(
            f"--source {args.source!r}: only 'synthetic' is built in; real corpora come in through --input"
        )
    if args.append or args.resume:
        raise GenLIPUserError("--append and --resume apply to --input corpora; synthetic data regenerates quickly")
    if args.num_samples is None or args.num_samples < 1:
        raise GenLIPUserError(f"--source synthetic needs --num-samples of at least 1, got {args.num_samples}")


def print_classes(out: str, shown: int = 12) -> None:
    """One line naming the classes the dataset records (`--labels folders`, `--classes`): what the probes will
    score, e.g. the folder names a category tree gave, so a stray folder shows before training."""
    from genlip_lit.eval.labelled import read_meta
    from genlip_lit.ingest.corpus import CLASSES_FILE

    names = read_meta(out).get("class_names") or []
    if names:
        more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
        print(f"labels: {len(names)} classes ({', '.join(map(str, names[:shown]))}{more}) -> "
              f"{os.path.join(out, CLASSES_FILE)}")


def _run(args: Any, argv: list[str], parser: Any, out: str, staged: bool = False) -> int:
    """The run into `out` (the output as shown; `args.output` is where it is written: a staging folder when
    `staged`)."""
    if args.input:
        from genlip_lit.ingest.corpus import summary_line

        with _sigterm_as_interrupt():
            report = run_corpus(args, resume_command(argv))
        print(summary_line(report, out))
        if not staged:
            print_classes(out)
        warn_multiline_sidecars(report)
        if not staged:
            report_caption_lengths(out)
        from genlip_lit.eval.result import MIN_RELIABLE_IMAGES

        val = report["kept"]["val"]
        if 0 < val < MIN_RELIABLE_IMAGES:  # e.g. 200 images at the default 1%: every evaluation would score on 2 of them
            logging.getLogger("genlip_lit").warning(
                "only %d val images: evaluations on fewer than ~%d samples are rough figures; raise --val-fraction "
                "(with --overwrite)", val, MIN_RELIABLE_IMAGES)
        return 0
    _check_source(args)
    args.source = args.source or "synthetic"
    if args.num_workers is None:
        args.num_workers = 1
    from genlip_lit.ingest.output_lock import output_lock
    from genlip_lit.storage.paths import join

    with output_lock(args.output if staged else out):
        meta = SOURCES[args.source](args)
    print(
        f"wrote {meta['num_train']} train + {meta['num_val']} val samples ({args.source}) to "
        f"{join(out, 'train')} and {join(out, 'val')} in {meta['seconds']:.1f} s"
    )
    if not staged:
        report_caption_lengths(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
