"""`genlip plan` against a real CPU training step: counted FLOPs and the memory model, for tiny and s16.

How the real step's peak memory is measured: torch's profiler with `profile_memory=True` records every allocation
and free of torch's CPU allocator (the `[memory]` events, with signed byte counts). The window opens after the
module is built, so the peak of one fit = parameter and buffer bytes (allocated before) + the highest running sum
of the events in the window. The fit runs two optimizer steps under Lightning exactly as `genlip fit` would
(GenLIPModule, AdamW with its parameter groups, gradient clipping, the Throughput callback counting step 0): the
first step creates AdamW's states, the second runs with them. Unlike the process's resident-set size this sees
neither the interpreter and libraries nor malloc's caching, only tensors, which is what the plan models.
"""

from __future__ import annotations

import gc

import lightning as L
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from genlip_lit.callbacks.throughput import Throughput
from genlip_lit.data.batch import Batch
from genlip_lit.data.tokenizer import OpenCLIPTokenizer
from genlip_lit.modules import GenLIPModule
from genlip_lit.plan import GPUSpec, PlanRequest, make_plan
from genlip_lit.plan.memory import NetworkSizes, Strategy, estimate_memory
from genlip_lit.plan.run_config import run_config_of
from genlip_lit.plan.trace import StepTrace

COMPACT = {"class_path": "genlip_lit.data.tokenizer.OpenCLIPTokenizer", "init_args": {"compact_corpus": "synthetic"}}


def cpu_plan(arch: str, image_size: int, batch: int, text_tokens: int):
    run = run_config_of({
        "model": {"class_path": "genlip_lit.modules.GenLIPModule", "init_args": {"arch": arch, "tokenizer": COMPACT}},
        "data": {"class_path": "genlip_lit.data.GenLIPDataModule",
                 "init_args": {"image_size": image_size, "batch_size": batch}},
        "trainer": {"devices": 1}})
    cpu = GPUSpec("this CPU", 1.0, 1.0, 64.0)
    # the CPU step's kernels: one SDPA call with a boolean mask, AdamW's unfused loop
    request = PlanRequest(run, cpu, 1, 1.0, 0.5, text_tokens=text_tokens, attn_impl="mask", fused_optimizer=False)
    return make_plan(request)


def synthetic_batches(n: int, batch: int, image_size: int, text: int, head: int, vocab: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        loss_mask = torch.ones(batch, text, dtype=torch.bool)
        loss_mask[:, :head] = False
        out.append(Batch(
            pixel_values=torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=g),
            input_ids=torch.randint(3, vocab, (batch, text), generator=g), loss_mask=loss_mask,
            text_mask=torch.ones(batch, text, dtype=torch.bool), pixel_mean=(0.5,) * 3, pixel_std=(0.5,) * 3))
    return out


def measured_step(arch: str, image_size: int, batch: int, text: int, head: int) -> tuple[float, int]:
    """(FLOPs per sample the Throughput callback counted, peak tensor bytes of a 2-step CPU fit)."""
    torch.manual_seed(0)
    tokenizer = OpenCLIPTokenizer(compact_corpus="synthetic")
    module = GenLIPModule(arch=arch, tokenizer=tokenizer, warmup_steps=0)
    data = synthetic_batches(2, batch, image_size, text, head, tokenizer.vocab_size)
    counter = Throughput()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, callbacks=[counter],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0)
    before = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running = highest = 0
    for _, nbytes in events:
        running += nbytes
        highest = max(highest, running)
    return counter.flops_per_sample, before + highest


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "image_size", "batches"), [("tiny", 64, (4, 16)), ("s16", 64, (4, 16))])
def test_plan_matches_a_real_cpu_step(arch, image_size, batches, one_torch_thread) -> None:
    peaks = []
    for batch in batches:
        plan = cpu_plan(arch, image_size, batch, text_tokens=20)
        shape = plan.shape
        flops, measured = measured_step(arch, image_size, batch, shape.text_tokens, shape.head_tokens)
        # the same counter over the same kernels: equal up to float rounding of the per-sample division
        assert plan.model_flops == pytest.approx(flops, rel=1e-2)
        # the issue asks for 25%; the model is within 1% here, so 10% catches a regression
        assert plan.at_config.peak == pytest.approx(measured, rel=0.1), (arch, batch, plan.at_config, measured)
        peaks.append((plan.at_config.peak, measured))
    # and the model follows the batch: the activation slope is there in both
    assert peaks[1][1] > peaks[0][1] and peaks[1][0] > peaks[0][0]


def toy_trace() -> StepTrace:
    """Forward saves 100 B of activations (+ 30 B of weight copies), backward frees them and makes 40 B of grads."""
    events = [(0, 30), (1, 60), (2, 40), (3, 10), (3, -10), (1, -60), (4, 40), (2, -40), (0, -30)]
    return StepTrace(2, 1000, events, {0: "weight_copy", 4: "grad"}, {"start": 0, "trunk_end": 3, "forward_end": 5})


def test_strategies_divide_and_add_what_they_must() -> None:
    trace, sizes = toy_trace(), NetworkSizes(params=10, largest=4, largest_unit=3, root=4)
    assert trace.peak() == 140 and trace.peak(exclude=("grad",)) == 140 and trace.alive_at("trunk_end") == 130
    single = estimate_memory(trace, sizes, Strategy("single"), "32-true")
    assert (single.params, single.grads, single.optimizer, single.weight_copies) == (40, 40, 80, 30)
    # the last step's gradients (40) are still there during the forward pass (Lightning zeroes them after it)
    assert single.activations == 100 and single.head_buffer == 10 and single.peak == 40 + 80 + 40 + 140
    buckets = estimate_memory(trace, sizes, Strategy("ddp"), "32-true")
    assert buckets.peak == single.peak + 40  # gradient-sized buckets without gradient_as_bucket_view
    assert estimate_memory(trace, sizes, Strategy("ddp", bucket_view=True), "32-true").peak == single.peak
    # accumulation holds all gradients through every micro-batch
    assert estimate_memory(trace, sizes, Strategy("single"), "32-true", accumulate=4).peak == 40 + 80 + 40 + 140
    # the unfused CPU AdamW adds two temporaries of the largest parameter at its step
    assert estimate_memory(trace, sizes, Strategy("single"), "32-true", fused_optimizer=False).buffers == 32
    fsdp = estimate_memory(trace, sizes, Strategy("fsdp", shard=4), "bf16-mixed")
    assert (fsdp.params, fsdp.grads, fsdp.optimizer) == (10, 10, 20)
    assert fsdp.weight_copies == (4 + 2 * 3) * 2  # root + two blocks gathered in bf16, not autocast's copies
    assert fsdp.buffers == 4 * (2 + 4)  # the root's unsharded bf16 gradients and their fp32 reduce copy
    assert fsdp.peak == 10 + 20 + 10 + 20 + (140 - 30) + 24
