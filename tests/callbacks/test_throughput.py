"""Throughput callback: counted training FLOPs per sample (exact on a known network), rates, CPU attention counted."""

from __future__ import annotations

import contextlib

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from genlip_lit.callbacks.throughput import Throughput, flop_counter
from genlip_lit.models import GenLIP, GenLIPConfig


class Items(list):
    """A batch: a list of samples with len() (the callback divides FLOPs by len(batch))."""


class TwoLayerMLP(L.LightningModule):
    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))

    def training_step(self, batch, batch_idx):
        x = torch.stack(list(batch))
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Logged(L.pytorch.loggers.logger.Logger):
    def __init__(self):
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    name, version = "mem", 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_flops_per_sample_are_counted_exactly_on_a_known_network(tmp_path) -> None:
    d_in, hidden, d_out, batch = 12, 32, 5, 4
    data = [torch.randn(d_in) for _ in range(40)]
    loader = DataLoader(data, batch_size=batch, collate_fn=Items)
    logger = Logged()
    callback = Throughput(peak_tflops=1.0, window=3)
    trainer = L.Trainer(max_steps=10, logger=logger, callbacks=[callback], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(TwoLayerMLP(d_in, hidden, d_out), loader)
    # forward 2*in*out per layer; backward: weight grads 2*in*out per layer, input grads only for layer 2
    # (the data needs none)
    expected = 2 * d_in * hidden + 2 * hidden * d_out + 2 * d_in * hidden + 2 * 2 * hidden * d_out
    assert callback.flops_per_sample == expected
    flops_logs = [m for _, m in logger.metrics if "perf/train_flops_per_sample" in m]
    assert [m["perf/train_flops_per_sample"] for m in flops_logs] == [expected]
    rates = [m for _, m in logger.metrics if "perf/samples_per_s" in m]
    assert len(rates) == 3  # steps 2..10 timed (step 1 was counted, not timed), logged every 3
    for m in rates:
        assert m["perf/samples_per_s"] > 0
        assert m["perf/mfu"] == pytest.approx(expected * m["perf/samples_per_s"] / 1e12)
        assert m["perf/tflops_per_s"] == pytest.approx(expected * m["perf/samples_per_s"] / 1e12)
    assert callback.state_dict() == {"flops_per_sample": expected}


def test_cpu_fused_attention_is_counted_like_the_cuda_kernels() -> None:
    q = torch.randn(2, 4, 10, 16, requires_grad=True)
    k = torch.randn(2, 4, 10, 16, requires_grad=True)
    v = torch.randn(2, 4, 10, 16, requires_grad=True)
    mask = torch.ones(10, 10, dtype=torch.bool).tril()
    with flop_counter() as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.sum().backward()
    shape = tuple(q.shape)
    expected = sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(shape, shape, shape, shape)
    assert counter.get_total_flops() == expected


@pytest.mark.parametrize("impl", ["sdpa", "mask", "manual"])
def test_every_attention_kernel_runs_under_the_counter_unchanged(impl) -> None:
    # "sdpa" builds a CausalBias tensor subclass, which a dispatch mode refuses: the kernel falls back to an
    # equal boolean mask there, so counting FLOPs on the GPU path neither crashes nor changes the loss.
    torch.manual_seed(0)
    model = GenLIP(GenLIPConfig.from_name("tiny", depth=2, width=64, ffn_hidden=128, vocab_size=50))
    model.set_attn_impl(impl)
    x, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    plain = model.loss(x, ids, mask).loss
    with flop_counter() as counter:
        counted = model.loss(x, ids, mask).loss
    torch.testing.assert_close(counted, plain)
    assert counter.get_total_flops() > 0


@pytest.mark.parametrize(("device_name", "precision", "expected"), [
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4),
    ("NVIDIA H200", "bf16-mixed", 989.4),  # Lightning's table: not found under this name, and 2,000 (sparse)
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312.0),
    ("NVIDIA A100-SXM4-40GB", "32-true", 19.5),
    ("NVIDIA L4", "bf16-mixed", 121.0),  # not ours: Lightning's table answers
    ("Some Future GPU", "bf16-mixed", None),
])
def test_auto_peak_reads_the_device_name(monkeypatch, device_name, precision, expected) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: device_name)
    callback = Throughput(peak_tflops="auto")
    trainer = type("T", (), {"precision": precision})()
    module = type("M", (), {"device": torch.device("cuda", 0)})()
    with pytest.warns(UserWarning) if expected is None else contextlib.nullcontext():
        callback.on_fit_start(trainer, module)
    assert callback.peak_tflops == (pytest.approx(expected) if expected else None)


def test_auto_peak_on_cpu_logs_no_mfu() -> None:
    callback = Throughput(peak_tflops="auto")
    with pytest.warns(UserWarning, match="no peak TFLOP/s known"):
        callback.on_fit_start(type("T", (), {"precision": "32-true"})(), type("M", (), {"device": torch.device("cpu")})())
    assert callback.peak_tflops is None
    with pytest.raises(ValueError, match="'auto' or null"):
        Throughput(peak_tflops="fast")


def test_cuda_steps_are_timed_after_a_synchronize(monkeypatch) -> None:
    order: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: order.append("sync"))
    clock = iter(range(100))
    monkeypatch.setattr("genlip_lit.callbacks.throughput.time.perf_counter", lambda: order.append("clock") or next(clock))
    callback = Throughput(measure_flops=False, window=1)
    module = type("M", (), {"device": torch.device("cuda", 0), "config": None})()
    trainer = type("T", (), {"loggers": [], "global_step": 0, "world_size": 1})()
    for step in range(2):
        callback.on_train_batch_end(trainer, module, None, Items([1, 2]), step)
    assert order == ["sync", "clock", "sync", "clock"]


def test_a_counted_step_computes_what_an_uncounted_step_computes() -> None:
    # torch's counter decomposes ops it has no formula for, so silu_backward (SwiGLU) ran as its math formula and
    # rounded differently: a fit with the Throughput callback diverged from one without. Now: bit for bit.
    torch.manual_seed(0)
    model = GenLIP(GenLIPConfig.from_name("tiny", depth=2, width=64, ffn_hidden=128, vocab_size=50))
    x, ids = torch.randn(8, 3, 32, 32), torch.randint(0, 50, (8, 12))
    mask = torch.ones(8, 12, dtype=torch.bool)

    def grads(counted: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        with flop_counter() if counted else contextlib.nullcontext():
            model.loss(x, ids, mask).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain, counted = grads(False), grads(True)
    assert all(torch.equal(plain[name], counted[name]) for name in plain)
    silu_input = torch.randn(64, 64, requires_grad=True)
    with flop_counter() as counter:
        torch.nn.functional.silu(silu_input).pow(2).sum().backward()
    assert counter.get_total_flops() == 0  # elementwise only: nothing counted, nothing decomposed into matmuls
