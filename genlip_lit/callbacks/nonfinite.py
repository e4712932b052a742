"""`NonFiniteGuard`: how many NaN/inf training steps in a row stop a run (the guard itself is in modules/safety.py).

    trainer:
      callbacks:
        - class_path: genlip_lit.callbacks.NonFiniteGuard
          init_args: {max_consecutive: 20}     # 0 = skip such steps forever, never stop

Without this callback a genlip module stops after 8 non-finite steps in a row. Every non-finite step is skipped
(no optimizer update) and counted in `train/nonfinite_steps` either way.
"""

from __future__ import annotations

import lightning as L

from genlip_lit.errors import GenLIPUserError


class NonFiniteGuard(L.Callback):
    """Sets the module's `max_nonfinite_steps`: non-finite steps in a row before the run stops (0 = never)."""

    def __init__(self, max_consecutive: int = 8) -> None:
        if isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 0:
            raise GenLIPUserError(f"NonFiniteGuard.max_consecutive must be an integer >= 0, got {max_consecutive!r}")
        self.max_consecutive = max_consecutive

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "max_nonfinite_steps"):
            raise GenLIPUserError(f"NonFiniteGuard needs a genlip module, got {type(pl_module).__name__}")
        pl_module.max_nonfinite_steps = self.max_consecutive
