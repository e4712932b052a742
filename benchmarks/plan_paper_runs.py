"""The table of the paper's runs (docs/planning.md), planned on paper (no GPU): `genlip plan` for L/16, So/16 and g/16.

    python benchmarks/plan_paper_runs.py                    # stage 1, 64 and 256 H100s, 40% MFU (~3 min of CPU)
    python benchmarks/plan_paper_runs.py --gpus 64 --archs so16 --gpu h200

Stage 1 as in the paper: 224 px, 8B samples, global batch 32,768 (49,152 for g/16), Qwen3's vocabulary
(151,936), ~270 tokens per sample (196 patches + 74 text positions), bf16-mixed, DDP with
gradient_as_bucket_view (experiments/stage1_corpus.yaml + experiments/scale/ddp.yaml), the LM loss in chunks of
1,024 tokens. Every shape comes from the presets (genlip_lit/models/config.py), so after a preset changes this
prints the new table. Each row is exactly what the `genlip plan` command printed under the table prints.
"""

from __future__ import annotations

import argparse
import time

PAPER_GLOBAL_BATCH = {"l16": 32768, "so16": 32768, "g16": 49152}
CONFIGS = ["experiments/stage1_corpus.yaml", "experiments/scale/ddp.yaml"]
VOCAB, TEXT_TOKENS, SAMPLES = 151936, 74, 8e9


def plan_row(arch: str, gpus: int, gpu_name: str, mfu: float):
    from genlip_lit.commands.plan import resolve_gpu
    from genlip_lit.plan import PlanRequest, make_plan, read_run_config

    global_batch = PAPER_GLOBAL_BATCH[arch]
    overrides = [("model.init_args.arch", arch), ("data.init_args.batch_size", str(global_batch // gpus))]
    run = read_run_config(CONFIGS, overrides)
    request = PlanRequest(run, resolve_gpu(gpu_name, None, None), gpus, SAMPLES, mfu, "--mfu", global_batch,
                          VOCAB, TEXT_TOKENS)
    return make_plan(request), overrides


def command_line(arch: str, gpus: int, gpu_name: str, mfu: float, overrides) -> str:
    configs = " ".join(f"--config {c}" for c in CONFIGS)
    sets = " ".join(f"--{k} {v}" for k, v in overrides)
    return (f"genlip plan {configs} {sets} --gpus {gpus} --gpu {gpu_name} --global-batch {PAPER_GLOBAL_BATCH[arch]} "
            f"--vocab-size {VOCAB} --text-tokens {TEXT_TOKENS} --samples {SAMPLES:.0e} --mfu {mfu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["l16", "so16", "g16"])
    parser.add_argument("--gpus", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--gpu", default="h100")
    parser.add_argument("--mfu", type=float, default=0.4)
    args = parser.parse_args()
    from genlip_lit.plan.estimate import flops_per_sample_for_time

    rows, commands, started = [], [], time.time()
    for arch in args.archs:
        for gpus in args.gpus:
            plan, overrides = plan_row(arch, gpus, args.gpu, args.mfu)
            best, req = plan.best, plan.request
            peak = req.gpu.peak_tflops(req.run.precision)
            ckpt = ", ckpt" if best.checkpointing else ""
            arithmetic = (f"{flops_per_sample_for_time(plan) / 1e9:,.1f}e9 x {SAMPLES:.0e} / ({gpus} x {peak:.1f}e12 x "
                          f"{args.mfu}) = {plan.days * 86400:,.0f} s")
            rows.append(f"| {arch} | {plan.params / 1e6:,.1f}M | {plan.model_flops / 1e9:,.1f} | {gpus} | "
                        f"{plan.global_batch:,} = {gpus} x {best.micro_batch} x {plan.best_accumulate}{ckpt} | "
                        f"{best.peak / 2**30:,.1f} | {plan.samples_per_s:,.0f} | {plan.days:,.2f} | "
                        f"{plan.gpu_hours:,.0f} | {arithmetic} |")
            commands.append(command_line(arch, gpus, args.gpu, args.mfu, overrides))
            print(f"planned {arch} on {gpus} GPUs ({time.time() - started:.0f} s)", flush=True)
    gpu = plan.request.gpu
    print(f"\nStage 1, 224 px, {SAMPLES:.0e} samples, {gpu.name} ({gpu.bf16_tflops} TFLOP/s bf16 dense, "
          f"{gpu.memory_gib} GiB), {args.mfu:.0%} MFU, DDP, bf16-mixed, vocab {VOCAB:,}, "
          f"{TEXT_TOKENS} text positions per sample:\n")
    print("| preset | params | GFLOP/sample (fwd+bwd) | GPUs | global batch = GPUs x micro-batch x accumulate | "
          "peak GiB/GPU | samples/s/GPU | days | GPU-hours | FLOP/sample x samples / (GPUs x peak x MFU) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nEach row is:")
    print("\n".join(commands))


if __name__ == "__main__":
    main()
