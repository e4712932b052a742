"""`genlip plan`: what a run costs before it starts (FLOPs, memory per GPU, micro-batch, days, GPU-hours).

    genlip plan --config experiments/stage1_corpus.yaml --config experiments/scale/ddp.yaml \
        --model.init_args.arch so16 --gpus 64 --gpu h100 --global-batch 32768 --vocab-size 151936 \
        --text-tokens 74 --samples 8e9 --mfu 0.4
    genlip plan --config experiments/stage2_corpus.yaml --gpus 8 --throughput-log runs/stage2_b16/version_0
    genlip plan --probe so16 --gpus 8        # the full ImageNet probe of `genlip probe-full` (plan/probe.py)

Reads the same YAML files as `genlip fit` (several compose, later wins; `--section.key value` overrides as on
the fit command line; what they leave out is the default in the classes' own signatures), builds the objective
they name on the meta device (no memory, no GPU; any objective registered in checkpoints/registry.py), traces its
own training step and prints the plan (genlip_lit/plan/). Argument parsing is kept apart from the work (`parse` / `run`) so another parser can drive it.

Here `--config` is the fit config being planned (as in `genlip fit`), so this command's own options file is
`--options FILE` (keys as `--print_config` writes them, `config:` included).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from genlip_lit.errors import GenLIPUserError

OVERRIDE_HINT = "config overrides look like --model.init_args.arch"


def build_parser() -> Any:
    from genlip_lit.commands.common import command_parser

    parser = command_parser(
        "plan",
        "FLOPs, memory per GPU, the micro-batch that fits, and days / GPU-hours of a training config, without a "
        "GPU. Extra --section.key VALUE arguments override the config as in `genlip fit`.",
        config_flag="--options",
    )
    parser.add_argument("--config", nargs="+", type=str | None, default=None,
                        help="`genlip fit` YAML files; several compose, later wins (--config A B, or repeat the flag); "
                        "required unless --probe")
    parser.add_argument("--gpus", type=int | None, default=None,
                        help="GPUs in the run (null: the config's trainer.devices x num_nodes)")
    parser.add_argument("--gpu", type=str, default="h100", help="h100, h200, a100-80, a100-40, or custom")
    parser.add_argument("--peak-tflops", type=float | None, default=None,
                        help="peak dense TFLOP/s (custom GPU, or override)")
    parser.add_argument("--memory-gib", type=float | None, default=None,
                        help="GPU memory in GiB (custom GPU, or override)")
    parser.add_argument("--samples", type=float | None, default=None,
                        help="training samples, e.g. 8e9 (null: trainer.max_steps x global batch)")
    parser.add_argument("--mfu", type=float | None, default=None,
                        help="model FLOPs utilisation to assume (null: 0.4, or --throughput-log's)")
    parser.add_argument("--throughput-log", type=str | None, default=None,
                        help="RUN_DIR: take the MFU a previous run's Throughput callback logged (TensorBoard or "
                        "CSV); not with --mfu")
    parser.add_argument("--global-batch", type=int | None, default=None,
                        help="samples per optimizer step (null: data.batch_size x accumulate x the config's GPUs)")
    parser.add_argument("--vocab-size", type=int | None, default=None,
                        help="LM-head vocabulary (null: the configured tokenizer's; Qwen3, as in the paper: 151936)")
    parser.add_argument("--text-tokens", type=int | None, default=None,
                        help="mean text positions per sample incl. BOS / prompt / EOS (null: max_text_len)")
    parser.add_argument("--mean-patches", type=int | None, default=None,
                        help="stage 2: mean patches per image (null: data.max_patches)")
    probe = parser.add_argument_group("a full probe (`genlip probe-full`) instead of a training config")
    probe.add_argument("--probe", type=str | None, default=None,
                       help="a preset (so16, l16, g16, b16, ...): plan its frozen-feature probe over a whole labelled "
                       "set, by default ImageNet-1k as experiments/probe_imagenet.yaml runs it")
    probe.add_argument("--probe-epochs", type=int, default=20, help="epochs over the train images")
    probe.add_argument("--probe-train-images", type=int, default=1_281_167, help="train images (ImageNet-1k's)")
    probe.add_argument("--probe-val-images", type=int, default=50_000, help="val images, probed every epoch")
    probe.add_argument("--probe-classes", type=int, default=1000, help="classes")
    probe.add_argument("--probe-image-size", type=int, default=224, help="image side in pixels")
    probe.add_argument("--probe-batch", type=int, default=1024, help="global batch")
    probe.add_argument("--workers-per-gpu", type=int, default=8, help="data workers per GPU (decoding images)")
    probe.add_argument("--decode-rate", type=float, default=250.0, help="images/s one data worker decodes and "
                       "augments (assumed; benchmarks/gpu_check.py measures it)")
    return parser


def run_probe(args: Any) -> str:
    """`--probe PRESET`: the plan of a full streamed probe (genlip_lit/plan/probe.py)."""
    from genlip_lit.plan.probe import ProbeRequest, format_probe_plan, plan_probe

    for flag, value in (("--probe-epochs", args.probe_epochs), ("--probe-train-images", args.probe_train_images),
                        ("--probe-val-images", args.probe_val_images), ("--probe-classes", args.probe_classes),
                        ("--probe-image-size", args.probe_image_size), ("--probe-batch", args.probe_batch),
                        ("--workers-per-gpu", args.workers_per_gpu), ("--decode-rate", args.decode_rate)):
        if value <= 0:
            raise GenLIPUserError(f"{flag} must be positive, got {value}")
    if args.gpus is None:
        raise GenLIPUserError("--probe needs --gpus N")
    request = ProbeRequest(args.probe, args.gpus, resolve_gpu(args.gpu, args.peak_tflops, args.memory_gib),
                           args.probe_epochs, args.probe_train_images, args.probe_val_images, args.probe_classes,
                           args.probe_image_size, args.probe_batch, 0.4 if args.mfu is None else args.mfu,
                           args.workers_per_gpu, args.decode_rate)
    return format_probe_plan(plan_probe(request))


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(this command's arguments, the `--a.b.c value` / `--a.b.c=value` config overrides)."""
    own: list[str] = []
    overrides: list[tuple[str, str]] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        key, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if "." not in key:
            own.append(token)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise GenLIPUserError(f"override {token} needs a value")
            value, i = argv[i + 1], i + 1
        overrides.append((key, value))
        i += 1
    return own, overrides


def parse(argv: Sequence[str]) -> tuple[Any, list[tuple[str, str]]]:
    """This command's options (jsonargparse), and the config overrides among the arguments."""
    import re
    from argparse import ArgumentError

    from genlip_lit.commands.common import check_config_file, config_files, merge_repeated, short_error

    own, overrides = split_overrides(argv)
    parser = build_parser()
    files = config_files(own, "--options")
    for path in files:
        check_config_file(path, "--options")
    try:
        args = parser.parse_args(merge_repeated(own, ["--config"]))
    except ArgumentError as err:
        stray = re.search(r"unrecognized arguments: (\S+)", str(err))
        if stray and not stray.group(1).startswith("-"):
            raise GenLIPUserError(f"unrecognised argument {stray.group(1)!r} ({OVERRIDE_HINT})") from None
        raise GenLIPUserError(short_error(str(err), parser, files, own)) from None
    if args.mfu is not None and args.throughput_log is not None:
        raise GenLIPUserError("give --mfu or --throughput-log, not both")
    if args.probe is not None and (args.config or overrides):
        raise GenLIPUserError("--probe plans a probe of a preset: give it without --config and config overrides")
    if args.probe is None and not args.config:
        raise GenLIPUserError("give --config FILE (the `genlip fit` config to plan), or --probe PRESET")
    return args, overrides


def resolve_gpu(name: str, peak_tflops: float | None, memory_gib: float | None):
    """A GPUSpec from --gpu, with --peak-tflops / --memory-gib overriding or (custom) supplying its figures."""
    import dataclasses

    from genlip_lit.perf.devices import GPUS, GPUSpec

    key = name.lower()
    if key in GPUS:
        spec = GPUS[key]
        changes = {}
        if peak_tflops is not None:
            changes.update(bf16_tflops=peak_tflops, fp32_tflops=peak_tflops)
        if memory_gib is not None:
            changes["memory_gib"] = memory_gib
        return dataclasses.replace(spec, **changes)
    if peak_tflops is None or memory_gib is None:
        raise GenLIPUserError(f"unknown --gpu {name!r}: choose {', '.join(GPUS)}, or give --peak-tflops and "
                              "--memory-gib (with --gpu custom)")
    if peak_tflops <= 0 or memory_gib <= 0:
        raise GenLIPUserError("--peak-tflops and --memory-gib must be positive")
    return GPUSpec(name if key != "custom" else "custom GPU", peak_tflops, peak_tflops, memory_gib)


def run(args: Any, overrides: list[tuple[str, str]]) -> str:
    """Make the plan and return its report."""
    from genlip_lit.plan import PlanRequest, format_plan, make_plan, read_run_config
    from genlip_lit.plan.estimate import set_mfu

    run_config = read_run_config(args.config, overrides)
    gpus = args.gpus or run_config.world_size
    if gpus is None:
        raise GenLIPUserError("give --gpus N: the config's trainer.devices is 'auto'")
    gpu = resolve_gpu(args.gpu, args.peak_tflops, args.memory_gib)
    for flag, value in (("--samples", args.samples), ("--global-batch", args.global_batch),
                        ("--vocab-size", args.vocab_size), ("--text-tokens", args.text_tokens),
                        ("--mean-patches", args.mean_patches)):
        if value is not None and value <= 0:
            raise GenLIPUserError(f"{flag} must be positive, got {value}")
    mfu = 0.4 if args.mfu is None else args.mfu
    request = PlanRequest(run_config, gpu, gpus, args.samples, mfu if args.throughput_log is None else 1.0,
                          "--mfu" if args.mfu is not None else "default", args.global_batch, args.vocab_size,
                          args.text_tokens, args.mean_patches)
    plan = make_plan(request)
    if args.throughput_log is not None:
        mfu, source = measured_mfu(args.throughput_log, plan)
        set_mfu(plan, mfu, source)
    return format_plan(plan)


def measured_mfu(run_dir: str, plan) -> tuple[float, str]:
    """MFU from a run's logs: perf/mfu as logged, or perf/samples_per_s x FLOPs per sample / this GPU's peak."""
    from genlip_lit.plan.logs import read_throughput_log

    log = read_throughput_log(run_dir)
    if log.mfu is not None:
        return log.mfu, f"perf/mfu median of {log.windows} windows in {log.source}"
    flops = log.flops_per_sample or plan.counted_flops[plan.best.checkpointing]
    what = "logged" if log.flops_per_sample else "this plan's"
    peak = plan.request.gpu.peak_tflops(plan.request.run.precision) * 1e12
    mfu = log.samples_per_s * flops / peak
    return mfu, (f"perf/samples_per_s {log.samples_per_s:.4g} x {what} {flops:.4g} FLOP/sample / "
                 f"{plan.request.gpu.name} peak, from {log.source}")


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(list(sys.argv[1:] if argv is None else argv))
    print(run_probe(args) if args.probe is not None else run(args, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
