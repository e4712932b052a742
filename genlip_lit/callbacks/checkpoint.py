"""`ResumableCheckpoint`: Lightning's ModelCheckpoint that also saves the step where `max_steps` stops training.

Stock ModelCheckpoint saves every `every_n_train_steps`; when `max_steps` is not a multiple of that, the last
steps of a run are in no checkpoint, and `on_train_end`'s fallback only fires if no `last.ckpt` was ever written
(and then saves after the epoch is closed, so a resume would skip the rest of that epoch). This saves the final
step from the same hook as the periodic saves, so the checkpoint resumes exactly: same optimizer step, same
position in the (litdata) data stream.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint plus a save at the `max_steps` stop (when that step is not already saved)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        final = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        if not final or self._last_global_step_saved == trainer.global_step:
            return
        if self._every_n_train_steps < 1 or self._should_skip_saving_checkpoint(trainer):
            return  # saving by step is off (epoch- or validation-driven checkpoints), or a sanity/dev run
        candidates = self._monitor_candidates(trainer)
        if self.monitor is None or self.monitor in candidates:
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
