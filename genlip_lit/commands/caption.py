"""`genlip caption`: one caption per image from a checkpoint (greedy by default), for files, folders and globs.

    genlip caption --ckpt runs/quickstart/version_3 a.png b.jpg
    genlip caption --ckpt runs/quickstart/version_3 photos/ 'scans/**/*.png' --recursive --output out/
    genlip caption --ckpt runs/quickstart scene.png --temperature 0.7 --top-p 0.9 --seed 1

Prints `path<TAB>caption` per image on stdout, in input order, as each batch finishes (with `--output DIR`, also
into DIR/captions.tsv). Messages, skipped files and progress go to stderr. Inputs are checked before the model is
loaded, so a mistyped path fails fast; a file that does not decode is reported (one line naming it) and skipped,
and the end says how many were. Exit status 0 when at least one image was captioned, 2 when none was.
Reading and preprocessing: `genlip_lit/ingest/image_files.py` (one image decoded at a time, bounded memory).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from genlip_lit.commands.common import (
    add_ckpt,
    add_device,
    add_output,
    add_threads,
    at_least,
    command_parser,
    parse,
)
from genlip_lit.console.logs import counted_library_warnings
from genlip_lit.errors import GenLIPUserError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Print one caption per image (path<TAB>caption), in input order.

Inputs: image files (any format Pillow reads), folders (their .jpg .jpeg .png
.webp .bmp .gif .tif .tiff files, sorted by path; subfolders with --recursive)
and globs (quoted, so that the shell leaves them: 'photos/**/*.jpg').

Preprocessing (the model's evaluation transform, settings from the checkpoint):
EXIF rotation applied, RGB (transparency on white), the shorter side resized to
the model's image size (bicubic, antialiased), then a CENTRE CROP to a square
of that size, normalized with the checkpoint's mean/std: the model sees the
central square of a wide or tall picture. Images are decoded one at a time and
shrunk at once: memory holds one full-size picture and --batch-size small ones.

A file that cannot be read or decoded (not an image, truncated, over --max-bytes
or --max-pixels, a FIFO) is reported on stderr and skipped; the end says how
many were. Exit status: 0 when at least one image was captioned, else 2."""


def build_parser() -> Any:
    import argparse

    from jsonargparse import DefaultHelpFormatter

    from genlip_lit.ingest.cleaning import DEFAULT_MAX_PIXELS
    from genlip_lit.ingest.safe_read import DEFAULT_MAX_BYTES

    p = command_parser("caption", DESCRIPTION)
    p.formatter_class = type("CaptionHelp", (argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter), {})
    add_ckpt(p)
    p.add_argument("images", nargs="+", type=str, help="image files, folders or quoted globs")
    p.add_argument("--recursive", action="store_true", help="also read the subfolders of a folder input")
    p.add_argument("--batch-size", type=int, default=32, help="images captioned together (memory: this many "
                   "model-sized images at once)")
    p.add_argument("--max-new-tokens", type=int | None, default=None, help="caption length limit (null: the "
                   "model's own)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the paper's setting)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when temperature > 0")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    p.add_argument("--max-bytes", type=str, default=f"{DEFAULT_MAX_BYTES // 2**20}MiB", help="skip files larger "
                   "than this (e.g. 64MiB, 200MB)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip images with more pixels than "
                   "this, judged from the header before decoding (decompression bombs)")
    add_device(p)
    add_threads(p)
    add_output(p, required=False, help="also write DIR/captions.tsv (null: print only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    from genlip_lit.ingest.image_files import expand_inputs
    from genlip_lit.ingest.safe_read import parse_bytes

    at_least("--batch-size", args.batch_size, 1)
    if args.output:
        from genlip_lit.commands.output import check_output

        check_output(args.output, "caption", args.overwrite)  # before the inputs are listed or a model loads
    at_least("--max-pixels", args.max_pixels, 1)
    try:
        max_bytes = parse_bytes(args.max_bytes)
    except ValueError as err:
        raise GenLIPUserError(f"--max-bytes: {err}") from None
    files, ignored = expand_inputs(args.images, recursive=args.recursive)
    if ignored:
        log.info("ignored %d file(s) in the folders without an image extension", ignored)
    import torch

    from genlip_lit.commands.common import load_module, torch_threads
    from genlip_lit.commands.output import claim_output

    with torch_threads(args.threads), counted_library_warnings():  # PIL's warnings: one counted line
        module, preprocessing, _ = load_module(args.ckpt, args.device)
        if args.output:
            claim_output(args.output, "caption", args.overwrite)
        if not module.is_generative:
            raise GenLIPUserError(f"checkpoint {args.ckpt} holds a {type(module).__name__}, which does not "
                                  "generate captions")
        generator = torch.Generator(device=module.device).manual_seed(args.seed)

        def caption(pixels: torch.Tensor) -> list[str]:
            normalized = preprocessing.normalize(pixels.to(module.device))
            return module.generate_captions(normalized, args.max_new_tokens, temperature=args.temperature,
                                            top_p=args.top_p, generator=generator)

        captioned, skipped = caption_files(files, preprocessing.transform(), caption, args.batch_size, max_bytes,
                                           args.max_pixels, args.output)
    if skipped:
        log.warning("captioned %d image(s), skipped %d (named above)", captioned, skipped)
    if not captioned:
        raise GenLIPUserError(f"no image captioned: all {skipped} input file(s) were skipped (named above)")
    return 0


def caption_files(files: list[str], transform: Any, caption: Any, batch_size: int, max_bytes: int,
                  max_pixels: int, output: str | None) -> tuple[int, int]:
    """Caption `files` batch by batch, printing `path<TAB>caption` lines as they come; (captioned, skipped)."""
    from genlip_lit.console.progress import progress
    from genlip_lit.ingest.image_files import preprocessed_batches

    # Results go to the stdout of the start: a rich display on a terminal stderr swaps sys.stdout for a proxy
    # that writes to stderr, which would take results out of `genlip caption ... > captions.tsv`.
    results = sys.stdout
    table = None
    if output:  # (created and marked by main: commands/output.py)
        os.makedirs(output, exist_ok=True)
        table = open(os.path.join(output, "captions.tsv"), "w", encoding="utf-8")  # noqa: SIM115 - closed below
    captioned = skipped = 0
    try:
        with progress(total=len(files), description="caption", unit="images") as bar:
            for batch in preprocessed_batches(files, transform, batch_size, max_bytes, max_pixels):
                for path, reason in batch.skipped:
                    log.warning("skipped %s: %s", path, reason)
                skipped += len(batch.skipped)
                lines = []
                if batch.pixels is not None:
                    captions = caption(batch.pixels)
                    lines = [f"{path}\t{text}" for path, text in zip(batch.paths, captions)]
                    captioned += len(lines)
                if lines:
                    out = sys.stdout if results.isatty() else results
                    print("\n".join(lines), file=out, flush=True)
                    if table is not None:
                        table.write("\n".join(lines) + "\n")
                        table.flush()
                if skipped:
                    bar.set_postfix(f"{skipped} skipped")
                bar.advance(len(batch.paths) + len(batch.skipped))
    finally:
        if table is not None:
            table.close()
    return captioned, skipped
