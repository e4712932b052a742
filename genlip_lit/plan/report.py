"""A plan as text: the report `genlip plan` prints, and the one-line row of the README's table of paper runs."""

from __future__ import annotations

from genlip_lit.console.tables import markdown_row
from genlip_lit.plan.estimate import Plan, flops_per_sample_for_time
from genlip_lit.plan.memory import MemoryEstimate, param_bytes_per_element

GIB = 2**30


def _gib(value: float) -> str:
    if abs(value) < GIB:
        return f"{value / 2**20:,.1f} MiB"
    return f"{value / GIB:,.2f} GiB"


def _count(value: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:,.1f}{unit}"
    return f"{value:,.0f}"


def _memory_rows(plan: Plan) -> list[str]:
    a, b = plan.at_config, plan.at_config_other
    without, with_ = (a, b) if not a.checkpointing else (b, a)
    precision = plan.request.run.precision
    element = param_bytes_per_element(precision)
    chunk = plan.config.loss_chunk_tokens
    copies = "gathered units (bf16)" if plan.strategy.kind == "fsdp" else "autocast weight copies"
    rows = [
        ("parameters" + (" (fp32)" if element == 4 else " (half)"), "params"),
        ("gradients", "grads"),
        ("AdamW states (2 per parameter)", "optimizer"),
        (copies, "weight_copies"),
        ("activations (blocks, saved for backward)", "activations"),
        ("LM-head loss buffer " + (f"(chunks of {chunk} tokens)" if chunk else "(full logits)"), "head_buffer"),
        ("buckets / reduce buffers / optimizer temps", "buffers"),
        ("peak of the step", "peak"),
    ]
    width = 44
    out = [f"memory per GPU at micro-batch {a.micro_batch} ({plan.strategy.label}, {precision})",
           f"  {'':{width}} {'no checkpointing':>18} {'checkpointing':>18}"]
    for label, key in rows:
        out.append(f"  {label:{width}} {_gib(getattr(without, key)):>18} {_gib(getattr(with_, key)):>18}")
    verdict = [("fits" if m.peak <= plan.usable else "does NOT fit") for m in (without, with_)]
    out.append(f"  {'in ' + _gib(plan.usable) + ' usable':{width}} {verdict[0]:>18} {verdict[1]:>18}")
    return out


def _describe_best(best: MemoryEstimate, plan: Plan) -> str:
    how = "with activation checkpointing" if best.checkpointing else "without activation checkpointing"
    return (f"largest micro-batch that fits: {best.micro_batch} ({how}, peak {_gib(best.peak)}) -> "
            f"accumulate_grad_batches {plan.best_accumulate} for the global batch {plan.global_batch:,} "
            f"= {plan.request.gpus} GPUs x {best.micro_batch} x {plan.best_accumulate}")


def format_plan(plan: Plan) -> str:
    """The full report."""
    req, cfg, shape = plan.request, plan.config, plan.shape
    run, gpu = req.run, req.gpu
    peak = gpu.peak_tflops(run.precision)
    lines = [f"genlip plan: {' + '.join(run.sources) or '(defaults)'}"]
    lines.append(f"model     {run.module_class.__name__} {run.arch}: {cfg.depth} blocks x {cfg.width}, {cfg.num_heads} "
                 f"heads x {cfg.head_dim}, FFN {cfg.ffn_hidden}, vocab {plan.vocab_size:,}: {_count(plan.params)} "
                 "parameters")
    where = f"{run.image_size} px fixed" if run.resolution == "fixed" else "native resolution, packed"
    lines.append(f"sample    {where}: {shape.patches} patches + {shape.text_tokens} text positions "
                 f"({shape.targets} loss targets)")
    counted = plan.counted_flops
    lines.append(f"FLOPs     {plan.model_flops / 1e9:,.1f} GFLOP per sample, forward + backward (torch FlopCounterMode "
                 f"on the meta device); {counted[True] / 1e9:,.1f} with activation checkpointing (a recomputed forward)")
    if plan.packing_efficiency is not None:
        lines.append(f"packing   {plan.packing_efficiency:.1%} of the slots hold tokens at micro-batch "
                     f"{plan.best.micro_batch} (rows of {run.max_tokens:,}; mean-size samples, real ones pack a little "
                     "worse): time counts the padding")
    lines.append(f"GPUs      {req.gpus} x {gpu.name}: {peak:,.1f} TFLOP/s peak, {gpu.memory_gib} GiB, "
                 f"{_gib(plan.usable)} usable (CUDA context and allocator headroom taken off)")
    lines.append(f"batch     global {plan.global_batch:,} = {req.gpus} GPUs x {plan.per_gpu_batch}; the config's "
                 f"micro-batch {plan.micro_batch} x accumulate {plan.per_gpu_batch // plan.micro_batch}")
    lines.append("")
    lines += _memory_rows(plan)
    lines.append("")
    lines.append(_describe_best(plan.best, plan))
    flops = flops_per_sample_for_time(plan)
    lines.append(f"time at {req.mfu * 100:.3g}% MFU ({req.mfu_source}): {plan.samples_per_s:,.1f} samples/s per GPU; "
                 f"{req.samples:.3g} samples on {req.gpus} GPU(s) = {plan.days:,.2f} days, {plan.gpu_hours:,.0f} GPU-hours")
    lines.append(f"          = {flops:.4g} FLOP/sample x {req.samples:.3g} samples / ({req.gpus} GPUs x "
                 f"{peak * 1e12:.4g} FLOP/s x {req.mfu:.3g})")
    if plan.notes:
        lines.append("")
        lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def table_row(plan: Plan, label: str) -> str:
    """`| run | GFLOP/sample | GPUs | micro-batch x accumulate | peak GiB | samples/s/GPU | days | GPU-hours |`."""
    best, req = plan.best, plan.request
    ckpt = " (ckpt)" if best.checkpointing else ""
    return markdown_row([label, f"{plan.model_flops / 1e9:,.1f}", req.gpus,
                         f"{best.micro_batch} x {plan.best_accumulate}{ckpt}", f"{best.peak / GIB:,.1f}",
                         f"{plan.samples_per_s:,.0f}", f"{plan.days:,.1f}", f"{plan.gpu_hours:,.0f}"])
