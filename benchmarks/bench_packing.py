"""Packing efficiency of stage-2 batches on the embedded data: packed rows vs padding every sample.

    python benchmarks/bench_packing.py                       # the stage-2 quickstart scenes, 200 steps
    python benchmarks/bench_packing.py --steps 50 --max-tokens 1024 16384 --batch-sizes 8 64

Efficiency = real tokens / token slots of a step's tensor. "packed": `data/packing.py` rows of max_tokens
(padded to the fullest row, rounded to pad_to_multiple). "padded": no packing, every sample padded to the longest
sample of its step (what a plain [B, N] batch of native-resolution samples costs). Only lengths matter, so the
scenes' sizes and captions are generated, not rendered into shards.
"""

from __future__ import annotations

import argparse
import statistics

from genlip_lit.data.packing import plan_rows, row_width, sample_length
from genlip_lit.data.synthetic import SceneConfig, generate_scene
from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer
from genlip_lit.data.transforms import native_grid

STAGE2_SCENES = SceneConfig(image_size=96, max_image_size=160, patch_size=8, word_prob=1.0, word_font_px=10)


def sample_lengths(count: int, patch_size: int, min_patches: int, max_patches: int, registers: int) -> list[int]:
    encoder = CaptionEncoder(OpenCLIPTokenizer(compact_corpus="synthetic"), None, max_len=48)
    lengths = []
    for i in range(count):
        scene = generate_scene(0, i, STAGE2_SCENES)
        grid = native_grid(*scene.image.size, patch_size, min_patches, max_patches)
        lengths.append(sample_length(grid, len(encoder.encode(scene.caption)[0]), registers))
    return lengths


def efficiencies(lengths: list[int], batch_size: int, max_tokens: int, multiple: int) -> tuple[float, float, float]:
    """(packed efficiency, padded efficiency, mean rows per step) over consecutive steps of batch_size samples."""
    useful = packed = padded = 0
    rows_per_step = []
    for start in range(0, len(lengths) - batch_size + 1, batch_size):
        step = lengths[start : start + batch_size]
        rows = plan_rows(step, max_tokens)
        useful += sum(step)
        packed += len(rows) * row_width(rows, step, max_tokens, multiple)
        padded += len(step) * max(step)
        rows_per_step.append(len(rows))
    return useful / packed, useful / padded, statistics.mean(rows_per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--pad-to-multiple", type=int, nargs="+", default=[8, 128])
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--registers", type=int, default=0)
    args = parser.parse_args()
    lengths = sample_lengths(args.steps * max(args.batch_sizes), args.patch_size, 16, 1024, args.registers)
    print(f"{len(lengths)} stage-2 scenes: {min(lengths)}..{max(lengths)} tokens, mean {statistics.mean(lengths):.0f}")
    print("| samples/step | max_tokens | pad_to_multiple | rows/step | packed | padded to longest |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch_size in args.batch_sizes:
        steps = lengths[: args.steps * batch_size]
        for max_tokens in args.max_tokens:
            for multiple in args.pad_to_multiple:
                packed, padded, rows = efficiencies(steps, batch_size, max_tokens, multiple)
                print(f"| {batch_size} | {max_tokens} | {multiple} | {rows:.1f} | {packed:.1%} | {padded:.1%} |")


if __name__ == "__main__":
    main()
