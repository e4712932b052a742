"""A run's cost on paper: FLOPs per sample, memory per GPU, the micro-batch that fits, time and GPU-hours.

    from genlip_lit.plan import PlanRequest, make_plan, read_run_config

Everything is read from the config (the objective it names built on the meta device by plan/objective.py, any
registered objective alike) and from one traced step of that objective per micro-batch tried (plan/trace.py), so a
preset or a default that changes shape changes the plan with it. Time = counted FLOPs per sample x samples / (GPUs x peak x MFU), with the FLOPs counted
as the `Throughput` callback counts them (a recomputed forward included when activation checkpointing is on), so
an MFU read from that callback's logs plugs straight in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from genlip_lit.errors import GenLIPUserError
from genlip_lit.perf.devices import GPUSpec, computes_in_half, usable_bytes
from genlip_lit.plan.memory import MemoryEstimate, NetworkSizes, Strategy, estimate_memory, half_dtype
from genlip_lit.plan.objective import THE_CONFIGURED_TOKENIZER, MetaObjective, meta_objective
from genlip_lit.plan.run_config import RunConfig
from genlip_lit.plan.trace import SampleShape, StepTrace, trace_step


@dataclass
class PlanRequest:
    run: RunConfig
    gpu: GPUSpec
    gpus: int
    samples: float | None  # None: trainer.max_steps x the global batch
    mfu: float
    mfu_source: str = "--mfu"
    global_batch: int | None = None  # None: data.batch_size x accumulate_grad_batches x the config's GPUs
    vocab_size: int | None = None  # None: the configured tokenizer's (given: the tokenizer's vocabulary in the plan)
    text_tokens: int | None = None  # mean text positions per sample; None: max_text_len (an upper bound)
    mean_patches: int | None = None  # stage 2: mean patches per image; None: max_patches
    attn_impl: str = "sdpa"  # the kernel the step runs: "sdpa" on CUDA (the default), "mask" on CPU
    fused_optimizer: bool = True  # AdamW(fused=True), as configure_optimizers uses on CUDA


@dataclass
class Plan:
    request: PlanRequest
    config: object  # GenLIPConfig
    shape: SampleShape
    notes: list[str]
    params: int
    strategy: Strategy
    global_batch: int
    per_gpu_batch: int
    micro_batch: int  # the config's
    checkpointing: bool  # the config's
    model_flops: float  # per sample, forward + backward
    counted_flops: dict[bool, float]  # per sample as the Throughput callback counts, by checkpointing
    packing_efficiency: float | None
    usable: float
    at_config: MemoryEstimate
    at_config_other: MemoryEstimate  # the same micro-batch with checkpointing flipped
    best: MemoryEstimate  # the largest micro-batch that fits (checkpointing as needed)
    best_accumulate: int
    samples_per_s: float = 0.0  # per GPU, with `best`
    days: float = 0.0
    gpu_hours: float = 0.0
    searched: list[int] = field(default_factory=list)
    vocab_size: int = 0  # the objective's tokenizer's (--vocab-size when given)

    @property
    def fits(self) -> bool:
        return self.at_config.peak <= self.usable


def strategy_of(run: RunConfig, gpus: int) -> tuple[Strategy, list[str]]:
    """The trainer's strategy as the memory model needs it (Lightning strategy names and class paths)."""
    spec = run.strategy
    class_path = spec.get("class_path", "") if isinstance(spec, dict) else str(spec)
    args = (spec.get("init_args") or {}) if isinstance(spec, dict) else {}
    name = class_path.rsplit(".", 1)[-1].lower()
    notes: list[str] = []
    if name.startswith(("modelparallel", "fsdp")):
        if int(args.get("tensor_parallel_size", 1) or 1) != 1:
            raise GenLIPUserError("tensor parallelism is not implemented: set tensor_parallel_size: 1")
        wanted = args.get("data_parallel_size")
        if isinstance(wanted, int) and wanted != gpus:
            notes.append(f"the run needs data_parallel_size {gpus} (the config says {wanted}): "
                         f"--trainer.strategy.init_args.data_parallel_size {gpus}")
        return Strategy("fsdp", shard=gpus), notes
    if name.startswith("ddp"):
        return Strategy("ddp", bucket_view=bool(args.get("gradient_as_bucket_view", False))), notes
    if name in ("auto", "single_device", "singledevicestrategy", ""):
        return (Strategy("ddp") if gpus > 1 else Strategy("single")), notes
    raise GenLIPUserError(f"genlip plan models DDP and FSDP2; trainer.strategy {class_path!r} is not covered")


def sample_shape(run: RunConfig, config, head: int, text_tokens: int | None, mean_patches: int | None,
                 max_text_len: int) -> tuple[SampleShape, list[str]]:
    """One (mean) sample's grid and text, and how they were chosen."""
    text = int(text_tokens or max_text_len)
    notes = [f"text: {text} positions per sample" + ("" if text_tokens else
             " (max_text_len, an upper bound: batches pad to their longest caption; --text-tokens N for your mean)")]
    if text <= head:
        raise GenLIPUserError(f"--text-tokens {text} leaves no caption after the {head} loss-free positions")
    p = config.patch_size
    if run.resolution == "fixed":
        side = run.image_size // p
        if side < 1:
            raise GenLIPUserError(f"data.image_size {run.image_size} is smaller than one {p}-pixel patch")
        return SampleShape((side, side), text, head), notes
    patches = int(mean_patches or run.max_patches)
    if not run.min_patches <= patches <= run.max_patches:
        raise GenLIPUserError(f"--mean-patches {patches} is outside data.min_patches..max_patches "
                              f"({run.min_patches}..{run.max_patches})")
    notes.append(f"stage 2: {patches} patches per image" + ("" if mean_patches else
                 " (max_patches: images stored larger than max_patches x patch^2 pixels are all scaled to the cap, "
                 "as web images at --max-side 1024 are; --mean-patches N for smaller ones)") +
                 "; FLOPs are those of one mean-size sample alone (its own prefix-LM), padding enters as packing "
                 "efficiency")
    rows = max(1, math.isqrt(patches))
    return SampleShape((rows, math.ceil(patches / rows)), text, head), notes


def packing_efficiency(run: RunConfig, config, shape: SampleShape, micro_batch: int) -> float:
    """Useful share of the packed slots for `micro_batch` mean-size samples (data/packing.py's planner)."""
    from genlip_lit.data.packing import plan_rows, row_width

    length = config.num_registers + shape.patches + shape.text_tokens
    if length > run.max_tokens:
        raise GenLIPUserError(f"a sample of {length} tokens does not fit data.max_tokens={run.max_tokens}")
    lengths = [length] * micro_batch
    rows = plan_rows(lengths, run.max_tokens)
    return sum(lengths) / (len(rows) * row_width(rows, lengths, run.max_tokens, run.pad_to_multiple))


class _Tracer:
    """Traces of one objective at one sample shape, cached by (samples, checkpointing): each costs a meta step."""

    def __init__(self, build: Callable[[], MetaObjective], shape: SampleShape, precision: str) -> None:
        self.shape = shape
        self.model = build().module  # its own copy: a "*-true" precision casts it
        self.network = self.model.optimized_model()
        self.config = self.model.config
        self.half = half_dtype(precision)
        if precision in ("bf16-true", "16-true") and self.half is not None:
            self.model.to(self.half)  # half parameters, no autocast
            self.half = None
        self.sizes = NetworkSizes.of(self.network)
        self.cache: dict[tuple[int, bool], StepTrace] = {}

    def trace(self, samples: int, checkpointing: bool) -> StepTrace:
        key = (samples, checkpointing)
        if key not in self.cache:
            self.cache[key] = trace_step(self.model, self.shape, samples, self.half, checkpointing)
        return self.cache[key]

    def flops_per_sample(self, checkpointing: bool) -> float:
        """Every sample of a trace has the same shape, so any trace's count divides evenly."""
        done = [(n, t) for (n, c), t in self.cache.items() if c == checkpointing]
        n, trace = done[0] if done else (1, self.trace(1, checkpointing))
        return trace.flops / n


# objectives and tracers by what built them: a table of plans (benchmarks/plan_paper_runs.py) reuses them
_OBJECTIVES: dict[tuple, MetaObjective] = {}
_TRACERS: dict[tuple, _Tracer] = {}


def _objective_key(run: RunConfig, vocab_size: int | None, attn_impl: str) -> tuple:
    return (run.module_class, repr(sorted(run.model.items())), vocab_size, attn_impl)


def _objective(run: RunConfig, vocab_size: int | None, attn_impl: str) -> MetaObjective:
    key = _objective_key(run, vocab_size, attn_impl)
    if key not in _OBJECTIVES:
        _OBJECTIVES.clear()  # one objective at a time
        _OBJECTIVES[key] = meta_objective(run, vocab_size, attn_impl)
    return _OBJECTIVES[key]


def _tracer(run: RunConfig, vocab_size: int | None, attn_impl: str, shape: SampleShape, precision: str) -> _Tracer:
    key = (_objective_key(run, vocab_size, attn_impl), shape, precision)
    if key not in _TRACERS:
        _TRACERS.clear()  # one network at a time: meta models are free, their traces' timelines are not
        _TRACERS[key] = _Tracer(lambda: meta_objective(run, vocab_size, attn_impl), shape, precision)
    return _TRACERS[key]


@dataclass
class _Memory:
    """Memory estimates of one plan's strategy from its tracer."""

    tracer: _Tracer
    run: RunConfig
    strategy: Strategy
    fused_optimizer: bool

    def at(self, micro_batch: int, checkpointing: bool, accumulate: int) -> MemoryEstimate:
        samples = micro_batch
        if self.run.resolution == "native":  # padding slots carry activations too
            eff = packing_efficiency(self.run, self.tracer.config, self.tracer.shape, micro_batch)
            samples = math.ceil(micro_batch / eff)
        est = estimate_memory(self.tracer.trace(samples, checkpointing), self.tracer.sizes, self.strategy,
                              self.run.precision, accumulate, self.fused_optimizer, checkpointing)
        est.micro_batch = micro_batch
        return est


def make_plan(request: PlanRequest) -> Plan:
    """Count, trace and search: see the module docstring."""
    run, gpus = request.run, request.gpus
    if gpus < 1:
        raise GenLIPUserError(f"--gpus must be >= 1, got {gpus}")
    if not 0 < request.mfu <= 1:
        raise GenLIPUserError(f"MFU must be in (0, 1], got {request.mfu}")
    objective = _objective(run, request.vocab_size, request.attn_impl)
    how = objective.tokenizer_source
    notes = [] if how == THE_CONFIGURED_TOKENIZER else [f"loss-free prompt length counted with {how}"]
    config = objective.config
    shape, shape_notes = sample_shape(run, config, objective.head_tokens, request.text_tokens, request.mean_patches,
                                      objective.max_text_len)
    strategy, strategy_notes = strategy_of(run, gpus)
    network = objective.module.optimized_model()
    if strategy.kind == "fsdp" and not callable(getattr(network, "shard_units", None)):
        raise GenLIPUserError(f"{run.module_class.__name__} does not support FSDP2 (ModelParallelStrategy): its "
                              "network declares no shard_units(); plan it with DDP (experiments/scale/ddp.yaml)")
    notes += shape_notes + strategy_notes
    global_batch = request.global_batch or run.batch_size * run.accumulate * (run.world_size or gpus)
    if global_batch % gpus:
        raise GenLIPUserError(f"global batch {global_batch} is not divisible by {gpus} GPUs")
    per_gpu = global_batch // gpus
    if request.samples is None:
        if run.max_steps <= 0:
            raise GenLIPUserError("give --samples N: the config sets no trainer.max_steps to count them from")
        request.samples = float(run.max_steps * global_batch)
        notes.append(f"samples: trainer.max_steps {run.max_steps:,} x global batch {global_batch:,}")
    if per_gpu % run.batch_size:
        raise GenLIPUserError(f"global batch {global_batch} is not divisible by {gpus} GPUs x micro-batch "
                              f"{run.batch_size} (data.batch_size)")
    tracer = _tracer(run, request.vocab_size, request.attn_impl, shape, run.precision)
    memory = _Memory(tracer, run, strategy, request.fused_optimizer)
    ckpt = bool(config.grad_checkpointing)
    usable = usable_bytes(request.gpu.memory_gib)
    accumulate = per_gpu // run.batch_size
    at_config = memory.at(run.batch_size, ckpt, accumulate)
    other = memory.at(run.batch_size, not ckpt, accumulate)
    best, searched = _largest_fitting(memory, per_gpu, ckpt, usable)
    if best is None and not ckpt:
        best, more = _largest_fitting(memory, per_gpu, True, usable)
        searched += more
    if best is None:
        one = memory.at(1, True, per_gpu)
        raise GenLIPUserError(
            f"does not fit even at micro-batch 1 with activation checkpointing: {one.peak / 2**30:.1f} GiB needed, "
            f"{usable / 2**30:.1f} GiB usable on a {request.gpu.name} (shard with FSDP2 or use a larger GPU)")
    counted = {c: tracer.flops_per_sample(c) for c in (False, True)}
    eff = packing_efficiency(run, config, shape, best.micro_batch) if run.resolution == "native" else None
    plan = Plan(request, config, shape, notes, tracer.sizes.params, strategy, global_batch, per_gpu,
                run.batch_size, ckpt, counted[False], counted, eff, usable, at_config, other, best,
                per_gpu // best.micro_batch, searched=searched, vocab_size=objective.vocab_size)
    set_mfu(plan, request.mfu, request.mfu_source)
    if not computes_in_half(run.precision):
        plan.notes.append(f"precision {run.precision}: peak is the GPU's plain fp32 rate; use bf16-mixed on GPUs")
    return plan


def flops_per_sample_for_time(plan: Plan) -> float:
    """Counted FLOPs per sample with the recommended checkpointing, padding of packed rows included."""
    return plan.counted_flops[plan.best.checkpointing] / (plan.packing_efficiency or 1.0)


def set_mfu(plan: Plan, mfu: float, source: str) -> None:
    """(Re)compute samples/s per GPU, days and GPU-hours at `mfu`."""
    if not 0 < mfu <= 1:
        raise GenLIPUserError(f"MFU must be in (0, 1], got {mfu:.4g} ({source})")
    req = plan.request
    req.mfu, req.mfu_source = mfu, source
    peak = req.gpu.peak_tflops(req.run.precision) * 1e12
    plan.samples_per_s = peak * mfu / flops_per_sample_for_time(plan)
    seconds = req.samples / (req.gpus * plan.samples_per_s)
    plan.days, plan.gpu_hours = seconds / 86400, seconds * req.gpus / 3600


def _largest_fitting(memory: _Memory, per_gpu: int, checkpointing: bool, usable: float
                     ) -> tuple[MemoryEstimate | None, list[int]]:
    """Binary search over the micro-batches that divide the per-GPU batch (memory grows with the micro-batch)."""
    candidates = [d for d in range(1, per_gpu + 1) if per_gpu % d == 0]
    lo, hi, best, tried = 0, len(candidates) - 1, None, []
    while lo <= hi:
        mid = (lo + hi) // 2
        b = candidates[mid]
        est = memory.at(b, checkpointing, per_gpu // b)
        tried.append(b)
        if est.peak <= usable:
            best, lo = est, mid + 1
        else:
            hi = mid - 1
    return best, tried

