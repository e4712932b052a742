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
from genlip_lit.plan import GPUSpec, PlanRequest, RunConfig, make_plan

COMPACT = {"class_path": "genlip_lit.data.tokenizer.OpenCLIPTokenizer", "init_args": {"compact_corpus": "synthetic"}}


def cpu_plan(arch: str, image_size: int, batch: int, text_tokens: int):
    run = RunConfig(arch=arch, tokenizer=COMPACT, image_size=image_size, batch_size=batch, devices=1)
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
        assert plan.at_config.peak == pytest.approx(measured, rel=0.25), (arch, batch, plan.at_config, measured)
        peaks.append((plan.at_config.peak, measured))
    # and the model follows the batch: the activation slope is there in both
    assert peaks[1][1] > peaks[0][1] and peaks[1][0] > peaks[0][0]
