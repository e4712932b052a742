"""`PlainProgressBar`: Lightning progress as periodic log lines, for `genlip fit` when stderr is not a terminal.

Lightning's TQDM and rich bars redraw one line many times a second; in a log file or CI output that is thousands
of carriage returns. This bar prints, through `genlip_lit.console.progress`, a line every `interval_s` seconds or every
`percent_step` percent of the steps, with the step count, rate, ETA and the progress-bar metrics (loss):

    genlip: fit: 540/2,700 steps (20.0%), 3.1 steps/s, elapsed 2:54, ETA 11:36, loss 2.31
    genlip: fit > validate: done, 4 batches in 0:02 (1.9 batches/s)

`genlip_lit.commands.fit.GenLIPCLI` picks it when stderr is not a TTY (RichProgressBar otherwise); set it
explicitly with `trainer.callbacks: [{class_path: genlip_lit.callbacks.plain_progress.PlainProgressBar}]`.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from genlip_lit.console.progress import DEFAULT_INTERVAL_S, DEFAULT_PERCENT_STEP, Progress


class PlainProgressBar(ProgressBar):
    """Progress of fit/validate/test/predict as plain periodic lines (see the module docstring)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, percent_step: float = DEFAULT_PERCENT_STEP) -> None:
        super().__init__()
        self.interval_s, self.percent_step = interval_s, percent_step
        self._enabled = True
        self._main: Progress | None = None
        self._eval: Progress | None = None

    # ------------------------------------------------------------------ ProgressBar interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    # ------------------------------------------------------------------ helpers
    def _open(self, description: str, total: float, unit: str, parent: Progress | None = None) -> Progress | None:
        if not self._enabled:
            return None
        total_or_none = None if total is None or math.isinf(total) or total <= 0 else total
        if parent is not None:
            return parent.stage(description, total=total_or_none, unit=unit).start()
        return Progress(total_or_none, description, unit, mode="plain", interval_s=self.interval_s,
                        percent_step=self.percent_step).start()

    def _metrics_text(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        items = []
        for key, value in self.get_metrics(trainer, pl_module).items():
            if key == "v_num":
                continue
            if isinstance(value, float):
                value = f"{value:.4g}"
            items.append(f"{key} {value}")
        return ", ".join(items)

    # ------------------------------------------------------------------ fit
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self._main = self._open("fit", total, "steps")
        if self._main is not None:
            self._main.resume_at(trainer.global_step)  # a resumed run: rate and ETA count this run's steps only

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._main is None:
            return
        self._main.postfix = self._metrics_text(trainer, pl_module)
        self._main.update(completed=trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._main is not None:
            # the last validation ran after the last batch's line: its val/* figures belong in the closing line
            self._main.postfix = self._metrics_text(trainer, pl_module)
            self._main.close()
            self._main = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A run that stopped on an exception: say where, and leave no stale progress open in this process.
        for bar in (self._eval, self._main):
            if bar is not None:
                bar.close(failed=True)
        self._eval = self._main = None

    # ------------------------------------------------------------------ evaluation loops
    def _eval_start(self, description: str, total: float) -> None:
        self._eval = self._open(description, total, "batches", parent=self._main)

    def _eval_batch(self) -> None:
        if self._eval is not None:
            self._eval.advance()

    def _eval_end(self) -> None:
        if self._eval is not None:
            self._eval.close()
            self._eval = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_start("validate", self.total_val_batches)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._eval_batch()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end()
        if self._main is not None:
            self._main.postfix = self._metrics_text(trainer, pl_module)  # fresh val/* in the next fit line

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start("test", sum(trainer.num_test_batches))

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._eval_batch()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start("predict", sum(trainer.num_predict_batches))

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._eval_batch()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end()
