"""`Throughput`: samples/s, tokens/s, measured training FLOPs per sample and MFU, for any module.

    trainer:
      callbacks:
        - class_path: genlip_lit.callbacks.Throughput
          init_args: {peak_tflops: auto}     # the device's dense peak (H100 / H200 989, A100 312); a number; or null

FLOPs are counted, not modelled: one training step (forward, backward, whatever the module's loss does) runs
under torch's `FlopCounterMode` (perf/counting.py, the counter `genlip plan` uses on the meta device), which
counts the matrix products and attention kernels actually executed (a masked attention counts its full score
matrix; with activation checkpointing the recomputed forward counts too). The same count then serves GenLIP and
every baseline, so "train FLOPs per sample" in a comparison table means the same thing for all of them. The
counted step is left out of the timing (the counter slows it down). On CUDA the clock is read after
`torch.cuda.synchronize()`, so a step's time is its kernels' time, not the time to queue them.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from genlip_lit.perf.counting import flop_counter
from genlip_lit.perf.devices import device_peak_tflops

__all__ = ["Throughput", "flop_counter", "tokens_in"]


class Throughput(L.Callback):
    """Logs perf/samples_per_s, perf/tokens_per_s, perf/train_flops_per_sample, perf/tflops_per_s and perf/mfu.

    Args:
        peak_tflops: the device's peak dense TFLOP/s for the training precision; MFU = achieved / (peak x
            devices). "auto": looked up from the CUDA device's name at the start of fit (perf/devices.py:
            H100 / H200 989, A100 312 in bf16, else Lightning's table; none on CPU). None: MFU is not logged.
        measure_flops: count FLOPs on training step `measure_at_step` (default the first).
        window: steps averaged in each logged rate (wall clock between step ends: data loading included).
    """

    def __init__(self, peak_tflops: float | str | None = None, measure_flops: bool = True,
                 measure_at_step: int = 0, window: int = 20) -> None:
        if isinstance(peak_tflops, str) and peak_tflops != "auto":
            raise ValueError(f"Throughput: peak_tflops must be a number, 'auto' or null, got {peak_tflops!r}")
        if not isinstance(peak_tflops, str) and peak_tflops is not None and peak_tflops <= 0:
            raise ValueError(f"Throughput: peak_tflops must be positive, got {peak_tflops}")
        if window < 1:
            raise ValueError(f"Throughput: window must be >= 1, got {window}")
        self.auto_peak = peak_tflops == "auto"
        self.peak_tflops = None if self.auto_peak else peak_tflops
        self.measure_flops = measure_flops
        self.measure_at_step = measure_at_step
        self.window = window
        self.flops_per_sample: float | None = None
        self._counter: FlopCounterMode | None = None
        self._counted_samples = 0
        self._last_end: float | None = None
        self._times: list[float] = []
        self._samples: list[int] = []
        self._tokens: list[int] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.auto_peak:
            self.peak_tflops = device_peak_tflops(pl_module.device, str(trainer.precision))
            if self.peak_tflops is None:
                warnings.warn(f"Throughput: no peak TFLOP/s known for {pl_module.device}; perf/mfu is not logged "
                              "(give peak_tflops as a number)", stacklevel=2)

    # -- FLOP counting over exactly one optimizer step ---------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.measure_flops and self.flops_per_sample is None and trainer.global_step == self.measure_at_step:
            self._counter = flop_counter()
            self._counter.__enter__()
            self._counted_samples = len(batch)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        # forward and backward are done; the update is elementwise
        if self._counter is None:
            return
        total = self._close_counter()
        if self._counted_samples:
            self.flops_per_sample = total / self._counted_samples
            for logger in trainer.loggers:
                logger.log_metrics({"perf/train_flops_per_sample": self.flops_per_sample}, step=trainer.global_step)
        self._last_end = None  # the counted step's time is not representative

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        if self._counter is not None:
            self._close_counter()

    def _close_counter(self) -> int:
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        return counter.get_total_flops()

    # -- rates -------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if self._counter is not None:  # the step produced no optimizer step (e.g. an empty batch): keep counting
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the step's kernels are queued, not done, when this runs
        now = time.perf_counter()
        if self._last_end is not None and len(batch):
            self._times.append(now - self._last_end)
            self._samples.append(len(batch))
            self._tokens.append(tokens_in(batch, pl_module))
        self._last_end = now
        if len(self._times) >= self.window:
            self._log_rates(trainer)

    def _log_rates(self, trainer: L.Trainer) -> None:
        seconds = sum(self._times)
        samples_per_s = sum(self._samples) / seconds
        metrics = {"perf/samples_per_s": samples_per_s, "perf/tokens_per_s": sum(self._tokens) / seconds}
        if self.flops_per_sample is not None:
            achieved = self.flops_per_sample * samples_per_s * trainer.world_size
            metrics["perf/tflops_per_s"] = achieved / 1e12
            if self.peak_tflops is not None:
                metrics["perf/mfu"] = achieved / (self.peak_tflops * 1e12 * trainer.world_size)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._times.clear()
        self._samples.clear()
        self._tokens.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"flops_per_sample": self.flops_per_sample}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.flops_per_sample = state_dict.get("flops_per_sample")


def tokens_in(batch: Any, pl_module: Any) -> int:
    """Image tokens (registers + patches) plus real text tokens of a batch, for the module's patch size."""
    if getattr(batch, "segment_ids", None) is not None:  # packed: every non-padding slot is a token
        return int((batch.segment_ids > 0).sum())
    config = getattr(pl_module, "config", None)
    text = int(batch.text_mask.sum()) if getattr(batch, "text_mask", None) is not None else 0
    if config is None or getattr(batch, "pixel_values", None) is None:
        return text
    h, w = batch.pixel_values.shape[-2:]
    per_image = config.num_registers + (h // config.patch_size) * (w // config.patch_size)
    return len(batch) * per_image + text
