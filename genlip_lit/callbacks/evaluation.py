"""Evaluation callbacks: when, on which rank, and where the results of `genlip_lit.eval` go during training.

Each callback runs its evaluation (`eval/evaluations.py`) every `every_n_steps` optimizer steps (0: never during
training) and at the end of fit, on a bounded sample budget, in eval mode under `torch.no_grad()`, on global
rank 0 only; it logs scalars to every logger (and images, tables and text to the loggers that take them:
`callbacks/media.py`) at the trainer's global step and keeps its history in checkpoints. `genlip eval` runs the
same objects once on a checkpoint. Data comes as a view of the trainer's data module (`eval/data.py`), so class
names, words and templates are the data's own.

    trainer:
      callbacks:
        - class_path: genlip_lit.callbacks.PatchReadout
          init_args: {every_n_steps: 1350, budget: 256}
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch

from genlip_lit.eval import evaluations
from genlip_lit.eval.data import DataModuleView, EvalView, ImageFolderView
from genlip_lit.eval.result import EvalResult

log = logging.getLogger(__name__)

__all__ = ["AttentionSink", "CaptionSamples", "EvalCallback", "EvalResult", "LinearProbe", "PatchReadout", "ZeroShot"]


def _shards_parameters(trainer: L.Trainer) -> bool:
    """True under strategies whose forward pass is collective (FSDP1, FSDP2 via ModelParallelStrategy)."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


class EvalCallback(L.Callback):
    """Scheduling, eval-mode bookkeeping, logging and checkpointed history shared by the evaluations."""

    name = "eval"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 256, batch_size: int = 64):
        if every_n_steps < 0 or budget < 1 or batch_size < 1:
            raise ValueError(f"{type(self).__name__}: every_n_steps >= 0, budget >= 1 and batch_size >= 1 needed")
        self.every_n_steps = every_n_steps
        self.at_fit_end = at_fit_end
        self.budget = budget
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = []  # {"step", "seconds", **scalars}, kept in checkpoints
        self._last_step = -1
        self._warned_sharded = False

    # -- the evaluation: one call into genlip_lit.eval --------------------------------------------------
    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        raise NotImplementedError

    # -- scheduling -----------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.run(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.at_fit_end and trainer.global_step != self._last_step and not trainer.sanity_checking:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: Any) -> EvalResult | None:
        self._last_step = trainer.global_step
        if _shards_parameters(trainer):
            # Under FSDP every forward is collective, but rank 0 evaluates alone (and generation stops at data-
            # dependent steps): skipping is the safe choice. The checkpoint is one file: `genlip eval` reads it.
            if not self._warned_sharded and trainer.is_global_zero:
                log.warning("%s skipped: evaluation callbacks need an unsharded model; run `genlip eval --ckpt` "
                            "on the checkpoint instead", type(self).__name__)
            self._warned_sharded = True
            return None
        if not trainer.is_global_zero or trainer.datamodule is None:
            return None
        view = DataModuleView(trainer.datamodule, pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        start = time.perf_counter()
        try:
            # fork_rng: an evaluation leaves the training's random streams (drop-path, dropout) where they were
            cuda = [pl_module.device] if pl_module.device.type == "cuda" else []
            with torch.no_grad(), torch.random.fork_rng(devices=cuda):
                result = self.evaluate(pl_module, view)
        finally:
            pl_module.train(was_training)
        result.scalars[f"{self.name}/seconds"] = time.perf_counter() - start
        self.history.append({"step": trainer.global_step, **result.scalars})
        from genlip_lit.callbacks.media import log_result

        log_result(trainer.loggers, trainer.global_step, result.finite_scalars(), result.images, result.texts,
                   result.tables)
        return result

    # -- checkpoints ----------------------------------------------------------------------------------
    def _key_fields(self) -> dict[str, Any]:
        """What tells two instances of one evaluation apart (e.g. probes on different image folders)."""
        return {"every_n_steps": self.every_n_steps, "budget": self.budget}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self._key_fields())

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._last_step = int(state_dict.get("last_step", -1))


class AttentionSink(EvalCallback):
    """Per-layer attention mass on the first token (from image and from text queries) and from text to image."""

    name = "sink"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 32, batch_size: int = 32):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        return evaluations.sink_evaluation(module, view, budget=self.budget, batch_size=self.batch_size)


class PatchReadout(EvalCallback):
    """Top-k words per patch through the LM head (or text embeddings); accuracy where the data has label maps.

    `words`: the candidate words; None = the data's (the embedded captions' vocabulary, else its class names).
    """

    name = "readout"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 256, batch_size: int = 64,
                 k: int = 5, words: list[str] | None = None, grid_images: int = 8):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)
        self.k = k
        self.words = words
        self.grid_images = grid_images

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        return evaluations.readout_evaluation(module, view, budget=self.budget, batch_size=self.batch_size,
                                              k=self.k, words=self.words, grid_images=self.grid_images)


class ZeroShot(EvalCallback):
    """Image classification from class names: caption likelihood (GenLIP) or text similarity (contrastive).

    `class_names` / `templates`: None = the data's (its class names; templates from the data, e.g. "a {size}
    {colour} {}" for the embedded scenes, else "a photo of a {}.").
    """

    name = "zero_shot"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 128, batch_size: int = 64,
                 class_names: list[str] | None = None, templates: list[str] | None = None):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)
        self.class_names = class_names
        self.templates = templates

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        return evaluations.zero_shot_evaluation(module, view, budget=self.budget, batch_size=self.batch_size,
                                                class_names=self.class_names, templates=self.templates)


class CaptionSamples(EvalCallback):
    """Greedy captions for a fixed held-out set (the first `budget` val samples), with CIDEr-D and BLEU-4."""

    name = "captions"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 64, batch_size: int = 64,
                 max_new_tokens: int | None = None, show: int = 8):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)
        self.max_new_tokens = max_new_tokens  # None: the module's caption_max_new_tokens
        self.show = show  # captions written to the log as text

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        return evaluations.caption_evaluation(module, view, budget=self.budget, batch_size=self.batch_size,
                                              max_new_tokens=self.max_new_tokens, show=self.show)


class LinearProbe(EvalCallback):
    """Frozen features -> a linear classifier on mean-pooled features and an attentive-pooling probe; top-1,
    beside two baselines on the same images: raw pixels at the patch grid, the same architecture at random init.

    Labelled data: the datamodule's shards by default (train split to fit, val split to test; classes from the
    shards' metadata, e.g. the embedded scenes' six shapes or `genlip optimize --classes`), or an ImageFolder
    tree (`image_folder: path/to/imagenet`, `CLASS/*.jpg`; its own train/val folders or a seeded split) at the
    data module's image size and normalisation. `budget` caps each split. The baselines do not change while the
    encoder trains: they are computed at the first run and reused (`baselines: false` skips them).
    """

    name = "probe"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 2000, batch_size: int = 64,
                 image_folder: str | None = None, test_budget: int | None = 500, attentive_epochs: int | None = None,
                 baselines: bool = True):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)
        self.image_folder = image_folder
        self.test_budget = test_budget  # None: same as budget
        self.attentive_epochs = attentive_epochs  # None: the probe's default
        self.baselines = baselines
        self._baseline_rows: dict[str, Any] | None = None  # computed once per view (they do not train)

    def _key_fields(self) -> dict[str, Any]:
        return {**super()._key_fields(), "image_folder": self.image_folder}

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        if self.image_folder and isinstance(view, DataModuleView):
            from genlip_lit.data.transforms import Preprocessing

            dm = view.datamodule
            view = ImageFolderView(self.image_folder, Preprocessing(dm.image_size, dm.mean, dm.std), view.device)
        result = evaluations.probe_evaluation(
            module, view, budget=self.budget, test_budget=self.test_budget or self.budget,
            batch_size=self.batch_size, attentive_epochs=self.attentive_epochs, baselines=self.baselines,
            cached_baselines=self._baseline_rows,
        )
        if self.baselines and self._baseline_rows is None:
            self._baseline_rows = result.details.get("baselines") or None
        return result
