"""Training-step throughput: GenLIP beside open_clip CLIP and SigLIP with an image tower of the same size.

    python benchmarks/bench_train_step.py                        # tiny preset, 64 px, batch 32, CPU
    python benchmarks/bench_train_step.py --preset so16 --image-size 224 --batch 64 --device cuda --peak-tflops 989

One optimizer step = forward, loss, backward and AdamW update on random data of the stage-1 shape (an image and
`--text-len` caption tokens per sample). GenLIP runs [patches ; text] through one transformer with its LM loss;
the open_clip models are `open_clip.model.CLIP` with a ViT of the preset's width, depth, head width and patch size
(MLP ratio chosen so its 2-matrix MLP has the parameters of GenLIP's SwiGLU) and a causal text tower, trained with
open_clip's ClipLoss / SigLipLoss. FLOPs per step are counted by torch's FlopCounterMode over forward + backward
(callbacks/throughput.py), so MFU = counted FLOPs / time / peak. Each model runs in a fresh process: peak memory is
`torch.cuda.max_memory_allocated` on CUDA, the resident-set high-water mark above the start on CPU.
On CUDA the step runs under bf16 autocast. Prints a table last (nothing asserted).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

MODELS = ("genlip", "clip", "siglip")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def build(name: str, args: argparse.Namespace, device: str) -> tuple[torch.nn.Module, Callable[[], torch.Tensor], int]:
    """(model, a function computing one step's loss on fixed random data, tokens per sample)."""
    from genlip_lit.models import GenLIP, GenLIPConfig

    cfg = GenLIPConfig.from_name(args.preset, vocab_size=args.vocab, loss_chunk_tokens=args.loss_chunk)
    b, s, n_text = args.batch, args.image_size, args.text_len
    pixels = torch.randn(b, 3, s, s, device=device)
    patches = (s // cfg.patch_size) ** 2
    if name == "genlip":
        model = GenLIP(cfg).to(device)
        ids = torch.randint(0, args.vocab, (b, n_text), device=device)
        mask = torch.ones(b, n_text, dtype=torch.bool, device=device)
        mask[:, 0] = False
        return model, lambda: model.loss(pixels, ids, mask).loss, patches + n_text

    from open_clip.loss import ClipLoss, SigLipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    mlp_ratio = (1.5 if cfg.ffn_type == "swiglu" else 1.0) * cfg.ffn_hidden / cfg.width
    vision = CLIPVisionCfg(layers=cfg.depth, width=cfg.width, head_width=cfg.head_dim, mlp_ratio=mlp_ratio,
                           patch_size=cfg.patch_size, image_size=s)
    text_width = min(cfg.width, 512)
    text = CLIPTextCfg(context_length=n_text, vocab_size=args.vocab, width=text_width, heads=max(1, text_width // 64),
                       layers=min(cfg.depth, 12))
    model = CLIP(embed_dim=min(cfg.width, 512), vision_cfg=vision, text_cfg=text,
                 init_logit_bias=-10.0 if name == "siglip" else None, output_dict=True).to(device)
    loss_fn = SigLipLoss() if name == "siglip" else ClipLoss()
    ids = torch.randint(0, args.vocab, (b, n_text), device=device)

    def step() -> torch.Tensor:
        out = model(pixels, ids)
        if name == "siglip":
            return loss_fn(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
        return loss_fn(out["image_features"], out["text_features"], out["logit_scale"])

    return model, step, patches + 1 + n_text  # + the class token


def run_child(name: str, args: argparse.Namespace) -> dict:
    from genlip_lit.callbacks.throughput import flop_counter

    device = args.device
    torch.manual_seed(0)
    cuda = device == "cuda"
    base = _rss_bytes() if not cuda else 0
    model, loss_of_step, tokens = build(name, args, device)
    if args.compile:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def one_step() -> None:
        with autocast:
            loss = loss_of_step()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with flop_counter() as counter:  # forward + backward, once, outside the timing
        with autocast:
            loss = loss_of_step()
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    for _ in range(args.warmup):
        one_step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "flops_per_step": flops,
            "seconds_per_step": seconds, "tokens_per_sample": tokens, "peak_bytes": peak}


def default_peak_tflops(device: str) -> float | None:
    """Dense bf16 peak of known GPUs (vendor figures); None = unknown (no MFU column)."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return 989.0 if ("H100" in name or "H200" in name) else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--text-len", type=int, default=32, help="caption tokens per sample (paper stage 1: ~74)")
    p.add_argument("--vocab", type=int, default=49408)
    p.add_argument("--loss-chunk", type=int, default=0, help="GenLIP LM-head loss chunk (0 = plain logits)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return 0

    rows = []
    shared = ["--preset", args.preset, "--image-size", str(args.image_size), "--batch", str(args.batch),
              "--text-len", str(args.text_len), "--vocab", str(args.vocab), "--loss-chunk", str(args.loss_chunk),
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
    for name in args.models:
        cmd = [sys.executable, __file__, *shared, *(["--compile"] if args.compile else []), "--child", name]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{name}: {args.batch / rows[-1]['seconds_per_step']:.1f} samples/s", flush=True)
    peak = args.peak_tflops or default_peak_tflops(args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    print(f"\nTraining step, preset {args.preset}, {args.image_size} px, {args.text_len} text tokens, batch "
          f"{args.batch}, on {args.device} ({where}, torch {torch.__version__}"
          + (", bf16 autocast" if args.device == "cuda" else ", fp32") + (", compiled" if args.compile else "") + ")")
    print("| model | params (M) | samples/s | tokens/s | GFLOP/sample | achieved TFLOP/s | MFU | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        samples = args.batch / r["seconds_per_step"]
        achieved = r["flops_per_step"] / r["seconds_per_step"] / 1e12
        mfu = f"{100 * achieved / peak:.1f}%" if peak else "-"
        print(f"| {r['model']} | {r['params'] / 1e6:.1f} | {samples:.1f} | {samples * r['tokens_per_sample']:.0f} | "
              f"{r['flops_per_step'] / args.batch / 1e9:.2f} | {achieved:.3f} | {mfu} | "
              f"{r['peak_bytes'] / 2**20:.0f} |")
    return 0 if len(rows) == len(args.models) and all(math.isfinite(r["seconds_per_step"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
