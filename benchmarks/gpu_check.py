"""The first-GPU check: FlexAttention at So/16's head dim, So/16 training steps, CE memory, KV-cache captions.

    python benchmarks/gpu_check.py                       # one H100 / H200: under 8 minutes, prints a table
    python benchmarks/gpu_check.py --cpu                 # shrunk shapes on CPU (~1 min; tests/perf/test_gpu_check.py)
    python benchmarks/gpu_check.py --json gpu_check.json

What it runs (GPU shapes; --cpu shrinks every one, keeping head dim 72):
1. FlexAttention over packed rows vs SDPA with the dense mask, bf16, head dim 72, forward and backward against
   an fp32 reference; whether this torch's compiled kernel takes head dim 72 unpadded (else the zero-padded
   call of models/flex_pad.py runs, and is checked too).
2. Stage 1: So/16 at 224 px, 30 steps of GenLIPModule under Lightning in bf16-mixed, without and with compiled
   blocks: samples/s, MFU (FLOPs per sample counted by `genlip plan` on the meta device, next to the Throughput
   callback's count of the real step), peak memory next to `genlip plan`'s estimate for this micro-batch.
   The same stage-1 steps with the per-step safety code (non-finite guard, training RNG window; modules/safety.py)
   on and switched off, alternately twice: samples/s of each (goal: the guard costs under 1%).
3. Stage 2: 20 steps on rows of 16,384 packed tokens (FlexAttention, activation checkpointing): tokens/s,
   packing efficiency, MFU.
4. LM-head cross-entropy at vocab 151,936: plain logits vs chunks of 1,024 tokens, peak memory, equal loss.
5. KV-cache greedy captioning: new tokens/s.
6. The full probe's step (`genlip probe-full`): So/16 frozen forward in bf16 + attentive and linear heads' AdamW
   step, images/s and MFU, and one CPU worker's JPEG decode + RandomResizedCrop rate; with `genlip plan --probe`'s
   FLOP count, the hours of the 20-epoch ImageNet probe on 8 such GPUs at these rates.
The exit status is 1 when a check's numbers disagree (attention outside bf16 tolerance, unequal losses).

The GPU machine needs torch, lightning, timm and torchmetrics only: batches are built in memory, a stand-in
tokenizer has the paper's vocabulary size, and Lightning drives GenLIPModule without the datamodule, so neither
litdata, open_clip nor jsonargparse is imported. To bring them to an offline machine anyway:
    pip download litdata open_clip_torch jsonargparse -d .whl                          # here (.whl/ is gitignored)
    pip install --no-index --find-links .whl litdata open_clip_torch jsonargparse     # there
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch

SO16 = "so16"


@dataclass
class Shapes:
    """Every size the check uses; `GPU` is the real one, `CPU` the shrunk one CI runs."""

    device: str
    overrides: dict = field(default_factory=dict)  # on top of the so16 preset
    vocab: int = 151936
    image: int = 224
    batch: int = 64
    text: int = 74  # ~270 tokens per sample with 196 patches, as in the paper
    head: int = 7  # BOS + "Describe the image in detail."
    steps: int = 30
    window: int = 10
    loss_chunk: int = 1024
    compile: bool = True
    pack_tokens: int = 16384
    pack_samples: int = 13  # ~1,200 tokens each: one full row
    pack_grids: tuple = ((32, 32), (24, 40), (40, 24), (28, 36))
    pack_text: int = 176
    pack_multiple: int = 128
    pack_steps: int = 20
    flex_heads: int = 16
    ce_tokens: int = 8192
    ce_width: int = 1152
    gen_batch: int = 16
    gen_tokens: int = 128
    probe_batch: int = 256
    probe_steps: int = 20
    probe_classes: int = 1000


GPU = Shapes("cuda")
CPU = Shapes("cpu", overrides=dict(depth=2, width=144, num_heads=2, ffn_hidden=384), vocab=1000, image=64, batch=4,
             text=24, steps=3, window=1, loss_chunk=32, compile=False, pack_tokens=512, pack_samples=6,
             pack_grids=((4, 6), (6, 4), (5, 5)), pack_text=24, pack_multiple=8, pack_steps=2, flex_heads=2,
             ce_tokens=128, ce_width=64, gen_batch=2, gen_tokens=8, probe_batch=4, probe_steps=2, probe_classes=10)


class StandInTokenizer:
    """A fixed vocabulary and byte-derived ids: what a training step needs from a tokenizer, without one."""

    bos_id, eos_id, pad_id = 0, 1, 2

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [3 + b % (self.vocab_size - 3) for b in text.encode()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))

    def init_args(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def state_dict(self) -> dict:
        return {}


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, check: str, setting: str, result: str, ok: bool | None = None) -> None:
        self.rows.append({"check": check, "setting": setting, "result": result,
                          "status": "n/a" if ok is None else ("ok" if ok else "FAIL")})
        print(f"[{self.rows[-1]['status']}] {check}: {result}", flush=True)

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)

    def table(self, title: str) -> str:
        lines = [title, "", "| check | setting | result | status |", "|---|---|---|---|"]
        lines += [f"| {r['check']} | {r['setting']} | {r['result']} | {r['status']} |" for r in self.rows]
        return "\n".join(lines)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_tflops(device: str, precision: str) -> float | None:
    from genlip_lit.perf.devices import device_peak_tflops

    return device_peak_tflops(torch.device(device), precision)


# ------------------------------------------------------------------------------------------------------ attention
def _packed_layout(rows: int, tokens: int, device: str, generator: torch.Generator):
    from genlip_lit.models.attention import PackedLayout

    segments = torch.zeros(rows, tokens, dtype=torch.long)
    prefix = torch.zeros(rows, tokens, dtype=torch.bool)
    low, high = max(8, tokens // 16), max(16, tokens // 6)
    number = 0
    for r in range(rows):
        start = 0
        while start < tokens - low:
            length = min(int(torch.randint(low, high, (1,), generator=generator)), tokens - start)
            number += 1
            segments[r, start : start + length] = number
            prefix[r, start : start + int(0.7 * length)] = True
            start += length
    return PackedLayout(segments.to(device), prefix.to(device)), number


def check_attention(sh: Shapes, report: Report) -> None:
    from torch.nn.attention.flex_attention import flex_attention

    from genlip_lit.models.attention import attend
    from genlip_lit.models.flex_pad import REFUSED_HEAD_DIMS, padded_flex

    g = torch.Generator().manual_seed(0)
    rows, tokens, d = 1, sh.pack_tokens, 72
    layout, segments = _packed_layout(rows, tokens, sh.device, g)
    setting = f"{rows} x {tokens} tokens, {segments} samples, {sh.flex_heads} heads x {d}, bf16"
    q32, k32, v32 = (torch.randn(rows, sh.flex_heads, tokens, d, generator=g).to(sh.device) for _ in range(3))
    grad_out = torch.randn(rows, sh.flex_heads, tokens, d, generator=g).to(sh.device)
    backward = sh.device == "cuda"  # FlexAttention has no CPU backward

    def run(fn, dtype):
        inputs = [t.to(dtype).requires_grad_(backward) for t in (q32, k32, v32)]
        out = fn(*inputs)
        grads = torch.autograd.grad(out, inputs, grad_out.to(dtype)) if backward else ()
        return out.float(), [x.float() for x in grads]

    ref, ref_grads = run(lambda q, k, v: attend(q, k, v, layout, "mask")[0], torch.float32)
    sdpa, sdpa_grads = run(lambda q, k, v: attend(q, k, v, layout, "mask")[0], torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex on CPU says it is not compiled; refusals warn below
        flex, flex_grads = run(lambda q, k, v: attend(q, k, v, layout, "flex")[0], torch.bfloat16)
        accepted = "eager on CPU (compiled kernels are CUDA only)"
        if sh.device == "cuda":
            accepted = "compiled kernel took it unpadded" if d not in REFUSED_HEAD_DIMS else \
                "compiled kernel refused it: the zero-padded call (flex_pad.py) ran"
        compiled = torch.compile(flex_attention) if sh.device == "cuda" else flex_attention
        padded, padded_grads = run(lambda q, k, v: padded_flex(compiled, q, k, v, block_mask=layout.block_mask()),
                                   torch.bfloat16)
    report.add("FlexAttention head dim 72", "torch " + torch.__version__, accepted, d not in REFUSED_HEAD_DIMS or None)
    for name, out, grads in (("flex packed", flex, flex_grads), ("flex zero-padded to 128", padded, padded_grads)):
        err, base = (out - ref).abs().max().item(), (sdpa - ref).abs().max().item()
        ok = err <= max(2 * base, 2e-2)
        result = f"max abs diff to fp32 {err:.2e} (SDPA bf16: {base:.2e})"
        for g_out, g_sdpa, g_ref in zip(grads, sdpa_grads, ref_grads):
            g_err, g_base = (g_out - g_ref).abs().max().item(), (g_sdpa - g_ref).abs().max().item()
            ok = ok and g_err <= max(2 * g_base, 2e-2)
        if grads:
            result += f"; grads: {max((a - b).abs().max().item() for a, b in zip(grads, ref_grads)):.2e}"
        report.add(f"{name} vs SDPA (dense mask)", setting, result, ok)


# ------------------------------------------------------------------------------------------------------ training
class _Metrics:
    """A Lightning logger that keeps what the Throughput callback logs."""

    def __new__(cls):
        from lightning.pytorch.loggers.logger import Logger

        class Kept(Logger):
            name, version = "gpu_check", 0

            def __init__(self) -> None:
                super().__init__()
                self.rows: list[dict] = []

            def log_metrics(self, metrics, step=None):
                self.rows.append(dict(metrics))

            def log_hyperparams(self, *args, **kwargs):
                pass

            def last(self, key: str) -> float | None:
                values = [r[key] for r in self.rows if key in r]
                return values[-1] if values else None

        return Kept()


def _module(sh: Shapes, **overrides):
    from genlip_lit.modules.genlip import GenLIPModule

    arch = {**sh.overrides, "loss_chunk_tokens": sh.loss_chunk, **overrides}
    return GenLIPModule(arch=SO16, arch_overrides=arch, tokenizer=StandInTokenizer(sh.vocab), prompt=None,
                        max_text_len=max(sh.text, sh.pack_text), warmup_steps=0)


def _fit(sh: Shapes, module, batches: list, steps: int, count_flops: bool):
    """Lightning over in-memory batches; returns (logger, Throughput callback, peak CUDA bytes or None, seconds).

    The callback counts FLOPs only where asked: under its counter (a dispatch mode) compiled code may not run as
    compiled, and FlexAttention would run eagerly, materialising every 16K x 16K score matrix.
    """
    import lightning as L

    from genlip_lit.callbacks.throughput import Throughput

    logger = _Metrics()
    counter = Throughput(peak_tflops="auto" if sh.device == "cuda" else None, measure_flops=count_flops,
                         window=sh.window)
    trainer = L.Trainer(accelerator="gpu" if sh.device == "cuda" else "cpu", devices=1, max_steps=steps,
                        precision="bf16-mixed" if sh.device == "cuda" else "32-true", logger=logger,
                        callbacks=[counter], gradient_clip_val=1.0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    if sh.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    _sync(sh.device)
    peak = torch.cuda.max_memory_allocated() if sh.device == "cuda" else None
    return logger, counter, peak, time.perf_counter() - started


def _planned(config, shape, batch: int, checkpointing: bool, device: str):
    """(FLOPs per sample, per-GPU peak bytes) from `genlip plan`'s meta-device trace of this very step."""
    from genlip_lit.plan.memory import NetworkSizes, Strategy, estimate_memory
    from genlip_lit.plan.trace import meta_model, trace_step

    cuda = device == "cuda"
    model = meta_model(config, "sdpa" if cuda else "mask")
    trace = trace_step(model, shape, batch, torch.bfloat16 if cuda else None, checkpointing)
    memory = estimate_memory(trace, NetworkSizes.of(model), Strategy("single"), "bf16-mixed" if cuda else "32-true",
                             1, fused_optimizer=cuda, checkpointing=checkpointing)
    return trace.flops / batch, memory.peak


def _stage1_batch(sh: Shapes):
    from genlip_lit.data.batch import Batch

    g = torch.Generator().manual_seed(1)
    mask = torch.ones(sh.batch, sh.text, dtype=torch.bool)
    mask[:, : sh.head] = False
    return Batch(pixel_values=torch.randint(0, 256, (sh.batch, 3, sh.image, sh.image), dtype=torch.uint8, generator=g),
                 input_ids=torch.randint(3, sh.vocab, (sh.batch, sh.text), generator=g), loss_mask=mask,
                 text_mask=torch.ones_like(mask), pixel_mean=(0.5,) * 3, pixel_std=(0.5,) * 3)


def check_stage1(sh: Shapes, report: Report, compiled: bool) -> None:
    from genlip_lit.plan.trace import SampleShape

    name = "stage 1, compiled blocks" if compiled else "stage 1"
    if compiled and not sh.compile:
        report.add(name, "CPU mode", "skipped: compiling blocks on CPU takes minutes", None)
        return
    batch = _stage1_batch(sh)
    module = _module(sh, compile_blocks=compiled)
    logger, counter, peak, seconds = _fit(sh, module, [batch] * sh.steps, sh.steps, count_flops=not compiled)
    side = sh.image // module.config.patch_size
    flops, planned = _planned(module.config, SampleShape((side, side), sh.text, sh.head), sh.batch, False, sh.device)
    rate = logger.last("perf/samples_per_s")
    setting = f"So/16{'' if sh.device == 'cuda' else ' (shrunk)'}, {sh.image} px, batch {sh.batch}, {sh.steps} steps"
    result = f"{rate:,.1f} samples/s" if rate else "no rate logged"
    peak_tflops = _peak_tflops(sh.device, "bf16-mixed")
    if rate and peak_tflops:
        result += f", MFU {flops * rate / (peak_tflops * 1e12):.1%} of {peak_tflops:g} TFLOP/s"
    counted = counter.flops_per_sample
    result += f"; {flops / 1e9:,.4g} GFLOP/sample planned"
    if not compiled:
        result += f", Throughput counted {'nothing' if not counted else f'{counted / 1e9:,.4g}'}"
    if peak is not None:
        result += f"; peak {peak / 2**30:.2f} GiB, planned {planned / 2**30:.2f} GiB"
    same_count = compiled or (counted is not None and abs(counted - flops) <= 0.01 * flops)
    report.add(name, setting, result + f"; fit {seconds:.0f} s", same_count and rate is not None)


def _without_safety(module):
    """`module` with modules/safety.py's per-step work switched off: no non-finite verdict (the loss goes to the
    optimizer as it is) and no training RNG window; the data bookkeeping of modules/base.py stays."""
    module.skip_if_nonfinite = lambda loss, nonfinite=None: loss
    module.on_before_optimizer_step = lambda optimizer: None
    module.on_train_batch_start = lambda batch, batch_idx: module.record_training_batch(batch)
    module.on_train_batch_end = lambda outputs, batch, batch_idx: None
    return module


def check_guard(sh: Shapes, report: Report) -> None:
    """Stage-1 samples/s with the safety code on and off, alternately (on, off, on, off): the best of each."""
    batch = _stage1_batch(sh)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for guarded in (True, False) * (1 if sh.device == "cpu" else 2):
        torch.manual_seed(0)
        module = _module(sh)
        logger, _, _, _ = _fit(sh, module if guarded else _without_safety(module), [batch] * sh.steps, sh.steps,
                               count_flops=False)
        rate = logger.last("perf/samples_per_s")
        if rate:
            rates[guarded].append(rate)
    setting = f"So/16{'' if sh.device == 'cuda' else ' (shrunk)'}, {sh.image} px, batch {sh.batch}, {sh.steps} steps"
    if not rates[True] or not rates[False]:
        report.add("non-finite guard on vs off", setting, "no rate logged", False)
        return
    on, off = max(rates[True]), max(rates[False])
    result = f"on {on:,.1f} samples/s, off {off:,.1f} samples/s: {on / off - 1:+.2%}"
    # the 1% goal is a GPU figure: shrunk CPU steps are too short and noisy to weigh it
    report.add("non-finite guard on vs off", setting, result, on >= 0.99 * off if sh.device == "cuda" else True)


def check_stage2(sh: Shapes, report: Report) -> None:
    from genlip_lit.data.packing import PackItem, pack_items, packing_stats
    from genlip_lit.plan.trace import SampleShape

    module = _module(sh, grad_checkpointing=True)
    p = module.config.patch_size
    g = torch.Generator().manual_seed(2)
    items = []
    for i in range(sh.pack_samples):
        gh, gw = sh.pack_grids[i % len(sh.pack_grids)]
        ids = [0] + torch.randint(3, sh.vocab, (sh.pack_text - 1,), generator=g).tolist()
        items.append(PackItem(torch.randint(0, 256, (3, gh * p, gw * p), dtype=torch.uint8, generator=g), ids,
                              [False] * sh.head + [True] * (sh.pack_text - sh.head)))
    batch = pack_items(items, sh.pack_tokens, p, module.config.num_registers, 2, sh.pack_multiple)
    batch.pixel_mean, batch.pixel_std = (0.5,) * 3, (0.5,) * 3
    efficiency = packing_stats(batch.segment_ids).efficiency
    logger, _, peak, seconds = _fit(sh, module, [batch] * sh.pack_steps, sh.pack_steps, count_flops=False)
    per_shape = {}
    for gh, gw in sh.pack_grids:
        per_shape[(gh, gw)] = _planned(module.config, SampleShape((gh, gw), sh.pack_text, sh.head), 1, True,
                                       sh.device)[0]
    step_flops = sum(per_shape[sh.pack_grids[i % len(sh.pack_grids)]] for i in range(sh.pack_samples))
    tokens, samples = logger.last("perf/tokens_per_s"), logger.last("perf/samples_per_s")
    setting = (f"{tuple(batch.segment_ids.shape)[0]} row(s) x {batch.segment_ids.shape[1]:,} tokens, "
               f"{sh.pack_samples} samples, activation checkpointing, {sh.pack_steps} steps")
    result = f"{tokens:,.0f} tokens/s, packing efficiency {efficiency:.1%}" if tokens else "no rate logged"
    peak_tflops = _peak_tflops(sh.device, "bf16-mixed")
    if samples and peak_tflops:
        mfu = step_flops * samples / sh.pack_samples / (peak_tflops * 1e12)
        result += f", MFU {mfu:.1%} (useful FLOPs, recompute included)"
    if peak is not None:
        result += f"; peak {peak / 2**30:.2f} GiB"
    report.add("stage 2 packed", setting, result + f"; fit {seconds:.0f} s", tokens is not None)


# ------------------------------------------------------------------------------------------------------ LM head, generation
def check_lm_head(sh: Shapes, report: Report) -> None:
    from genlip_lit.models.lm_loss import lm_head_loss
    from genlip_lit.plan.trace import _LiveBytes

    g = torch.Generator().manual_seed(3)
    dtype = torch.bfloat16 if sh.device == "cuda" else torch.float32
    vocab = GPU.vocab
    hidden = torch.randn(sh.ce_tokens, sh.ce_width, generator=g).to(sh.device, dtype).requires_grad_()
    weight = (0.02 * torch.randn(vocab, sh.ce_width, generator=g)).to(sh.device, dtype).requires_grad_()
    targets = torch.randint(0, vocab, (sh.ce_tokens,), generator=g).to(sh.device)
    results = {}
    for chunk in (0, sh.loss_chunk):
        hidden.grad = weight.grad = None
        live = _LiveBytes({})
        if sh.device == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        with live:
            loss, _ = lm_head_loss(hidden, weight, targets, chunk)
            loss.backward()
        _sync(sh.device)
        seconds = time.perf_counter() - started
        running, peak = 0, 0
        for _, delta in live.events:
            running += delta
            peak = max(peak, running)
        if sh.device == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
        results[chunk] = (loss.detach().item(), peak, seconds)
    (plain, p_peak, p_s), (chunked, c_peak, c_s) = results[0], results[sh.loss_chunk]
    ok = abs(plain - chunked) <= (2e-2 if dtype == torch.bfloat16 else 1e-4) * max(1.0, abs(plain))
    report.add("LM-head CE, plain vs chunked", f"{sh.ce_tokens} tokens x {sh.ce_width} x vocab {vocab:,}, {dtype}",
               f"plain {p_peak / 2**20:,.0f} MiB {p_s:.2f} s; chunks of {sh.loss_chunk}: {c_peak / 2**20:,.0f} MiB "
               f"({c_peak / max(p_peak, 1):.2f}x) {c_s:.2f} s; loss {plain:.4f} vs {chunked:.4f}", ok)


def check_generation(sh: Shapes, report: Report) -> None:
    from genlip_lit.models import GenLIP, GenLIPConfig

    torch.manual_seed(4)
    config = GenLIPConfig.from_name(SO16, **sh.overrides, vocab_size=sh.vocab)
    model = GenLIP(config).to(sh.device).eval()
    if sh.device == "cuda":
        model = model.to(torch.bfloat16)
    pixels = torch.randn(sh.gen_batch, 3, sh.image, sh.image, device=sh.device, dtype=next(model.parameters()).dtype)
    prompt = list(range(3, 3 + sh.head))
    with torch.no_grad():
        model.generate(pixels, prompt, 2, eos_id=-1)  # warm-up
        _sync(sh.device)
        started = time.perf_counter()
        out = model.generate(pixels, prompt, sh.gen_tokens, eos_id=-1)
        _sync(sh.device)
    seconds = time.perf_counter() - started
    new = int(out.lengths.sum())
    report.add("KV-cache captioning", f"batch {sh.gen_batch}, {sh.image} px, {sh.gen_tokens} new tokens, greedy",
               f"{new / seconds:,.1f} new tokens/s ({seconds:.2f} s)", new == sh.gen_batch * sh.gen_tokens)


# ------------------------------------------------------------------------------------------------------ full probe
def _decode_rate(size: int, seconds: float = 2.0) -> float:
    """Images/s one CPU thread decodes and augments: a 500x375 JPEG -> RandomResizedCrop + flip -> normalized."""
    import io

    from PIL import Image

    from genlip_lit.data.transforms import Preprocessing, decode_image
    from genlip_lit.studies.probe_data import ProbeTransform

    g = torch.Generator().manual_seed(5)
    small = (torch.rand(47, 63, 3, generator=g) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    data, transform = buffer.getvalue(), ProbeTransform(Preprocessing(size), train=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            transform(decode_image(data), g)
            done += 1
        return done / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def check_probe(sh: Shapes, report: Report) -> None:
    from genlip_lit.eval.probes import AttentivePoolingClassifier, _default_heads
    from genlip_lit.models import GenLIPConfig
    from genlip_lit.models.transformer import image_tower
    from genlip_lit.plan.probe import ProbeRequest, plan_probe
    from genlip_lit.studies.probe_module import LinearHead

    torch.manual_seed(6)
    config = GenLIPConfig.from_name(SO16, **sh.overrides)
    tower = image_tower(config).to(sh.device).eval().requires_grad_(False)
    heads = torch.nn.ModuleList([AttentivePoolingClassifier(config.width, sh.probe_classes,
                                                            _default_heads(config.width)),
                                 LinearHead(config.width, sh.probe_classes)]).to(sh.device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-3, weight_decay=0.05)
    pixels = torch.randn(sh.probe_batch, 3, sh.image, sh.image, device=sh.device)
    labels = torch.randint(0, sh.probe_classes, (sh.probe_batch,), device=sh.device)
    autocast = torch.autocast(sh.device, dtype=torch.bfloat16, enabled=sh.device == "cuda")

    def step() -> float:
        with autocast:
            with torch.no_grad():
                patches = tower.encode_image(pixels)
            loss = torch.nn.functional.cross_entropy(heads[0](patches).float(), labels) + \
                torch.nn.functional.cross_entropy(heads[1](patches.mean(1)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    step()  # warm-up
    if sh.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(sh.device)
    started = time.perf_counter()
    losses = [step() for _ in range(sh.probe_steps)]
    _sync(sh.device)
    rate = sh.probe_batch * sh.probe_steps / (time.perf_counter() - started)
    result = f"{rate:,.0f} images/s"
    decode = _decode_rate(224, seconds=2.0 if sh.device == "cuda" else 0.5)
    if sh.device == "cuda":
        counted = plan_probe(ProbeRequest(SO16, 1, global_batch=sh.probe_batch, num_classes=sh.probe_classes,
                                          image_size=sh.image))
        peak = _peak_tflops(sh.device, "bf16-mixed")
        if peak:
            result += f" (MFU {rate * (counted.encoder_flops + counted.head_train_flops) / (peak * 1e12):.2f})"
        result += f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    result += f"; decode + RandomResizedCrop {decode:,.0f} images/s per CPU worker"
    if sh.device == "cuda":  # `genlip plan --probe so16 --gpus 8` with these two rates instead of assumed ones
        images = plan_probe(ProbeRequest(SO16, 8)).images
        result += (f"; 20-epoch ImageNet probe on 8 such GPUs: compute {images / (rate * 8) / 3600:,.2f} h, decode "
                   f"{images / (decode * 8 * 8) / 3600:,.2f} h with 8 workers per GPU")
    ok = bool(torch.isfinite(torch.tensor(losses)).all()) and rate > 0 and decode > 0
    precision = "bf16" if sh.device == "cuda" else "fp32"
    shrunk = " (shrunk)" if sh.device == "cpu" else ""
    report.add("full probe step", f"{SO16}{shrunk} frozen, {sh.image} px, batch {sh.probe_batch}, attentive + "
               f"linear heads, {precision}", result, ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="shrunk shapes on CPU (what CI runs)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=["attention", "stage1", "stage1-compiled", "guard", "stage2", "lm-head", "generation",
                                 "probe"])
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the shrunk check", file=sys.stderr)
        return 2
    sh = CPU if args.cpu else GPU
    if args.cpu:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|val_dataloader|does not have many workers|"
                                              r"smaller than the logging interval).*")
    report = Report()
    checks = {
        "attention": lambda: check_attention(sh, report),
        "stage1": lambda: check_stage1(sh, report, compiled=False),
        "stage1-compiled": lambda: check_stage1(sh, report, compiled=True),
        "guard": lambda: check_guard(sh, report),
        "stage2": lambda: check_stage2(sh, report),
        "lm-head": lambda: check_lm_head(sh, report),
        "generation": lambda: check_generation(sh, report),
        "probe": lambda: check_probe(sh, report),
    }
    started = time.perf_counter()
    for name, check in checks.items():
        if args.only and name not in args.only:
            continue
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others' figures
            report.add(name, "", f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", False)
    device = torch.cuda.get_device_name() if sh.device == "cuda" else "CPU (shrunk shapes)"
    print()
    print(report.table(f"gpu_check on {device}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device, "torch": torch.__version__, "rows": report.rows}, fh, indent=1)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
