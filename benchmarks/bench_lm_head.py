"""LM-head cross-entropy: peak memory and time of the chunked loss vs plain logits, forward + backward.

    python benchmarks/bench_lm_head.py                           # vocab 151,936 (the paper's), CPU
    python benchmarks/bench_lm_head.py --tokens 4736 --dim 1152 --chunks 1024 4096 --device cuda

Each variant runs in a fresh process. On CPU the peak is the process's resident-set high-water mark minus its
size after the inputs exist (glibc returns large freed blocks to the system, so this tracks tensors); on CUDA it
is `torch.cuda.max_memory_allocated` minus the inputs. Both variants compute the same loss and gradients
(tests/models/test_lm_loss.py); the table shows the loss so this can be seen too. Prints a table last (nothing asserted).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_variant(chunk: int, tokens: int, dim: int, vocab: int, device: str, repeats: int) -> dict:
    """Forward + backward of one variant (chunk 0 = plain logits); returns peak extra bytes, seconds, loss."""
    from genlip_lit.models.lm_loss import lm_head_loss

    torch.manual_seed(0)
    hidden = torch.randn(tokens, dim, device=device, requires_grad=True)
    weight = (torch.randn(vocab, dim, device=device) * dim**-0.5).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times, loss = [], None
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        loss, _ = lm_head_loss(hidden, weight, targets, chunk)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"chunk": chunk, "peak_bytes": max(peak, 0), "seconds": min(times), "loss": float(loss)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2368, help="target tokens (default: batch 32 x 74 caption tokens)")
    p.add_argument("--dim", type=int, default=768, help="hidden width (768 = b16)")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary (151,936 = the paper's Qwen3 tokenizer)")
    p.add_argument("--chunks", type=int, nargs="+", default=[256, 1024], help="chunk sizes to compare")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one variant, in this process
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_variant(args.child, args.tokens, args.dim, args.vocab, args.device, args.repeats)))
        return 0

    rows = []
    for chunk in [0, *args.chunks]:
        cmd = [sys.executable, __file__, "--child", str(chunk), "--tokens", str(args.tokens), "--dim", str(args.dim),
               "--vocab", str(args.vocab), "--device", args.device, "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    plain = rows[0]
    print(f"LM-head cross-entropy, forward + backward: {args.tokens} tokens x width {args.dim} x vocab {args.vocab:,}"
          f" on {args.device} ({platform.processor() or platform.machine()}, torch {torch.__version__})")
    print("| variant | peak extra memory (MiB) | vs plain | time (s) | loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        name = "plain logits" if r["chunk"] == 0 else f"chunked, {r['chunk']} tokens"
        ratio = r["peak_bytes"] / max(plain["peak_bytes"], 1)
        print(f"| {name} | {r['peak_bytes'] / 2**20:.0f} | {ratio:.2f}x | {r['seconds']:.2f} | {r['loss']:.6f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
