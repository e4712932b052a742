"""Caption generation: KV-cache decoding vs recomputing the whole sequence at every step.

    python benchmarks/bench_generate.py                          # b16, 224 px, batch 8, 16/64/256 new tokens
    python benchmarks/bench_generate.py --preset tiny --image-size 64 --new-tokens 16 64 256 --recompute-max 256

The model is randomly initialised (speed does not depend on the weights) and every sequence is forced to run the
full budget (no EOS). The cached path encodes the image once and then feeds one token per step; recompute runs
[patches ; text so far] through every block at every step, so its cost grows with the square of the length.
Recompute is skipped above `--recompute-max` new tokens (on a 2-core CPU the b16 recompute at 256 tokens takes
tens of minutes). Prints a table last (nothing asserted).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from genlip_lit.models import GenLIP, GenLIPConfig, generate


def time_generation(model: GenLIP, pixels: torch.Tensor, new_tokens: int, use_cache: bool, repeats: int) -> float:
    """Best wall time of `repeats` generations of exactly `new_tokens` tokens per image."""
    best = float("inf")
    for _ in range(repeats):
        if pixels.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(model, pixels, [0], new_tokens, eos_id=-1, use_cache=use_cache)  # -1: never ends early
        if pixels.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        assert out.tokens.shape[1] == new_tokens
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="b16")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=49408, help="LM head size (49,408 = open_clip BPE)")
    p.add_argument("--new-tokens", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--recompute-max", type=int, default=64, help="skip recompute above this many new tokens")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = GenLIP(GenLIPConfig.from_name(args.preset, vocab_size=args.vocab)).eval().to(args.device)
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    time_generation(model, pixels, 2, True, 1)  # warm-up (kernel selection, allocator)
    rows = []
    for n in args.new_tokens:
        cached = time_generation(model, pixels, n, True, args.repeats)
        recompute = time_generation(model, pixels, n, False, args.repeats) if n <= args.recompute_max else None
        rows.append((n, cached, recompute))
        print(f"{n} new tokens: cache {cached:.2f} s" + (f", recompute {recompute:.2f} s" if recompute else ""),
              flush=True)

    grid = args.image_size // model.cfg.patch_size
    print(f"\nGeneration, preset {args.preset} ({model.num_params() / 1e6:.0f}M params), {grid}x{grid} patches, "
          f"batch {args.batch}, on {args.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__})")
    print("| new tokens | KV cache (tokens/s) | recompute (tokens/s) | speed-up |")
    print("|---|---|---|---|")
    for n, cached, recompute in rows:
        total = args.batch * n
        rec = f"{total / recompute:.1f}" if recompute else f"skipped (> --recompute-max {args.recompute_max})"
        speed = f"{recompute / cached:.1f}x" if recompute else "-"
        print(f"| {n} | {total / cached:.1f} | {rec} | {speed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
