"""Shared test helpers: a tiny-config builder for in-process `genlip fit` runs and a recording callback."""

from __future__ import annotations

import lightning as L

RECORDS: list[dict] = []


class Recorder(L.Callback):
    """Records global step and learning rate at the start of fit and after every optimizer step."""

    def on_train_start(self, trainer, pl_module):
        RECORDS.append({"event": "start", "step": trainer.global_step, "lr": _lr(trainer)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RECORDS.append({"event": "step", "step": trainer.global_step, "lr": _lr(trainer)})


def _lr(trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"]


def tiny_fit_args(tmp_path, max_steps: int = 4, extra: list[str] | None = None) -> list[str]:
    """`genlip fit` arguments: quickstart config shrunk to seconds (32 px scenes, a 2-block model)."""
    return [
        "fit",
        "--config",
        "experiments/quickstart.yaml",
        f"--trainer.max_steps={max_steps}",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}/runs",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks=[]",  # the quickstart's evaluation callbacks: tests add the ones they check
        "--checkpoint.every_n_train_steps=2",
        "--model.init_args.arch_overrides={depth: 2, width: 64, ffn_hidden: 128}",
        "--data.init_args.synthetic={num_train: 128, num_val: 32, image_size: 32, word_prob: 0.5}",
        f"--data.init_args.cache_dir={tmp_path}/cache",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=16",
        "--data.init_args.num_workers=0",
        *(extra or []),
    ]
