"""Memory per GPU of one training step: parameters, gradients, AdamW states, weight copies, activations, buffers.

    python -m pytest tests/plan/test_plan_memory.py -q

The dynamic part (activations, the LM-head buffer, gradients as backward produces them, autocast's weight
copies) comes from a meta-device trace of the step (plan/trace.py); what lives outside `model.loss` is modelled
here per strategy:

- single device / DDP: fp32 parameters, gradients and AdamW's two states per parameter (bf16 for "*-true" half
  precision); DDP adds a gradient-sized bucket copy unless `gradient_as_bucket_view`. Lightning's training
  closure zeroes gradients (set to None) after the forward pass, before backward, so the previous step's
  gradients are alive through every forward pass; with gradient accumulation they are held throughout. The
  optimizer step peaks at parameters + gradients + states (+ two temporaries of the largest parameter for the
  unfused CPU AdamW).
- FSDP2 over N GPUs: parameters, gradients and states divided by N; autocast's weight copies are replaced by
  the gathered units: the root (embeddings, LM head, norms) stays gathered through forward and backward, two
  transformer blocks are gathered at a time (the one computing, the one prefetched), and one unit's gradients
  exist unsharded in the compute dtype plus an fp32 copy for the reduce-scatter.

The estimate leaves out the caching allocator's rounding and fragmentation and the CUDA context; perf/devices.py
takes headroom for those when it says whether a step fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genlip_lit.plan.trace import StepTrace, blocks_of

ADAM_STATES = 2  # exp_avg and exp_avg_sq, each the size of the parameter


@dataclass(frozen=True)
class Strategy:
    """How a step is spread over GPUs: "single", "ddp" or "fsdp" (FSDP2, sharded over `shard` GPUs)."""

    kind: str
    shard: int = 1
    bucket_view: bool = False  # DDP gradient_as_bucket_view: gradients live in the all-reduce buckets

    @property
    def label(self) -> str:
        if self.kind == "fsdp":
            return f"FSDP2, sharded over {self.shard} GPUs"
        if self.kind == "ddp":
            return "DDP" + (" (gradient_as_bucket_view)" if self.bucket_view else "")
        return "one device"


@dataclass(frozen=True)
class NetworkSizes:
    """Parameter counts of a network, as the strategies need them (read from the meta model)."""

    params: int
    largest: int  # elements of the largest parameter tensor
    largest_unit: int  # parameters of the largest transformer block (an FSDP unit)
    root: int  # parameters outside the blocks (FSDP's root unit: embeddings, LM head, norms)

    @classmethod
    def of(cls, model: nn.Module) -> NetworkSizes:
        params = [p for p in model.parameters() if p.requires_grad]
        blocks = blocks_of(model)
        per_block = [sum(p.numel() for p in blk.parameters()) for blk in blocks]
        total = sum(p.numel() for p in params)
        return cls(total, max((p.numel() for p in params), default=0), max(per_block, default=0),
                   total - sum(per_block))


@dataclass
class MemoryEstimate:
    """Bytes per GPU at one micro-batch; `peak` is what the step needs at its highest."""

    micro_batch: int
    checkpointing: bool
    params: float
    grads: float
    optimizer: float
    weight_copies: float  # autocast's cached bf16 weights (DDP), or the gathered units (FSDP2)
    activations: float  # saved by the blocks for backward, alive when the trunk ends
    head_buffer: float  # the LM head's loss at its peak, above the trunk's activations (logits or chunks)
    buffers: float  # DDP buckets, FSDP2 reduce buffers, the unfused optimizer's temporaries
    peak: float


def param_bytes_per_element(precision: str) -> int:
    """fp32 master weights except under "bf16-true" / "16-true", where parameters are half precision."""
    return 2 if str(precision) in ("bf16-true", "16-true", "bf16", "16", "half") else 4


def estimate_memory(trace: StepTrace, sizes: NetworkSizes, strategy: Strategy, precision: str,
                    accumulate: int = 1, fused_optimizer: bool = True, checkpointing: bool = False
                    ) -> MemoryEstimate:
    """Per-GPU memory of a training step whose `model.loss` part is `trace`."""
    element = param_bytes_per_element(precision)
    shard = strategy.shard if strategy.kind == "fsdp" else 1
    weights = sizes.params * element
    params, grads_all, optimizer = weights / shard, weights, ADAM_STATES * weights / shard
    optimizer_temps = 0.0 if fused_optimizer else 2.0 * sizes.largest * element
    activations = trace.alive_at("trunk_end", exclude=("weight_copy",))  # no gradient exists yet
    head = max(trace.peak_between("trunk_end", "forward_end", exclude=("weight_copy",)) - activations, 0)
    if strategy.kind == "fsdp":
        compute = 2 if str(precision).startswith(("bf16", "16")) else element
        gathered = (sizes.root + 2 * sizes.largest_unit) * compute
        unsharded_grads = max(sizes.root, sizes.largest_unit) * (compute + 4)
        grads = grads_all / shard
        dynamic = trace.peak(exclude=("grad", "weight_copy"))
        buffers = unsharded_grads + optimizer_temps
        peak = params + optimizer + grads + gathered + dynamic + buffers
        return MemoryEstimate(trace.micro_batch, checkpointing, params, grads, optimizer, gathered, activations,
                              head, buffers, peak)
    buckets = grads_all if strategy.kind == "ddp" and not strategy.bucket_view else 0.0
    if accumulate > 1:  # gradients are held through every micro-batch
        dynamic = grads_all + trace.peak(exclude=("grad",))
    else:  # the last step's gradients live through the forward pass; backward makes new ones (in the trace)
        dynamic = max(grads_all + trace.peak_between("start", "forward_end"), trace.peak())
    step = params + optimizer + dynamic + buckets
    optimizer_step = params + optimizer + grads_all + buckets + optimizer_temps
    return MemoryEstimate(trace.micro_batch, checkpointing, params, grads_all, optimizer,
                          trace.kind_bytes("weight_copy"), activations, head, buckets + optimizer_temps,
                          max(step, optimizer_step))


def half_dtype(precision: str) -> torch.dtype | None:
    """The compute dtype a meta trace should emulate: bf16 / fp16 for mixed or half precision, else None."""
    text = str(precision)
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16") or text == "half":
        return torch.float16
    return None
