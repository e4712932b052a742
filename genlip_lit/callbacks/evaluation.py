"""Evaluation callbacks: when, on which rank, and where the results of `genlip_lit.eval` go during training.

Each callback runs its evaluation (`eval/evaluations.py`) every `every_n_steps` optimizer steps (0: never during
training) and at the end of fit, on a bounded sample budget, in eval mode under `torch.no_grad()`, on global
rank 0 only; it logs scalars to every logger (and images, tables and text to the loggers that take them:
`callbacks/media.py`) at the trainer's global step and keeps its history in checkpoints. `genlip eval` runs the
same objects once on a checkpoint. Data comes as a view of the trainer's data module (`eval/data.py`), so class
names, words and templates are the data's own.

Each run says what it does (`genlip_lit.progress`: a rich row on a terminal, plain lines in a log file): a line
when it starts, the samples read so far with rate and ETA, and its headline figures when it ends:

    genlip: end of fit: linear probe (1,000 train + 500 val samples)
    genlip: end of fit: linear probe: 750/1,500 samples (50.0%), 61.2 samples/s, elapsed 0:12, ETA 0:12
    genlip: end of fit: linear probe: features read, training the probes
    genlip: end of fit: linear probe: done, 1,500 samples in 0:41 (36.6 samples/s), probe/linear_top1 0.912, ...

    trainer:
      callbacks:
        - class_path: genlip_lit.callbacks.PatchReadout
          init_args: {every_n_steps: 1350, budget: 256}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from genlip_lit.eval import evaluations
from genlip_lit.eval.data import DataModuleView, EvalView, ImageFolderView
from genlip_lit.eval.result import EvalResult
from genlip_lit.progress import progress

log = logging.getLogger(__name__)

FEW_SAMPLES = 50  # below this many samples the start line warns that the figure is noisy
EVAL_PERCENT_STEP = 25.0  # an evaluation takes seconds to a few minutes: a line per quarter (or per 30 s) is enough

__all__ = ["AttentionSink", "CaptionSamples", "EvalCallback", "EvalResult", "LinearProbe", "PatchReadout", "TransferProbe", "ZeroShot"]


def _shards_parameters(trainer: L.Trainer) -> bool:
    """True under strategies whose forward pass is collective (FSDP1, FSDP2 via ModelParallelStrategy)."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


class _CountingView:
    """A view that advances a progress by the samples of each batch it hands out (the evaluations stay unaware);
    after `reads` passes over the data it says `then` (what the evaluation does with what it read)."""

    def __init__(self, view: EvalView, bar: Any, reads: int = 0, then: str = "") -> None:
        self._view, self._bar, self._reads, self._then = view, bar, reads, then

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)

    def __repr__(self) -> str:
        return repr(self._view)

    def batches(self, split: str, budget: int, batch_size: int = 64) -> Iterator[Any]:
        yield from self._counted(self._view.batches(split, budget, batch_size), len)

    def labelled(self, split: str, budget: int, batch_size: int = 64) -> Iterator[Any]:
        yield from self._counted(self._view.labelled(split, budget, batch_size), lambda pair: len(pair[1]))

    def _counted(self, items: Iterator[Any], size: Any) -> Iterator[Any]:
        for item in items:
            yield item
            self._bar.advance(size(item))  # counted when the evaluation asks for more: it has used this one
        self._reads -= 1
        if self._reads == 0 and self._then:
            log.info("%s: %s", self._bar.label, self._then)


def _stored_samples(view: Any, split: str) -> int | None:
    """How many samples a data module view's split holds (litdata's index of its first dataset), else None."""
    import json
    import os

    base = getattr(getattr(view, "datamodule", None), "data_dirs", [None])[0]
    if not isinstance(base, str) or "://" in base:
        return None
    try:
        with open(os.path.join(base, split, "index.json"), encoding="utf-8") as fh:
            return sum(int(chunk["chunk_size"]) for chunk in json.load(fh)["chunks"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reads(view: Any, split: str, budget: int) -> tuple[int, str]:
    """(samples at most, "256 val" or "up to 256 val" when the split's size is unknown)."""
    stored = _stored_samples(view, split)
    if stored is None:
        return budget, f"up to {budget:,} {split}"
    return min(budget, stored), f"{min(budget, stored):,} {split}"


def _headline(result: EvalResult, keys: tuple[str, ...]) -> str:
    """`probe/linear_top1 0.912, ...` of the keys the result has (finite), or why it was skipped."""
    if "skipped" in result.details:
        return f"skipped: {result.details['skipped']}"
    scalars = result.finite_scalars()
    return ", ".join(f"{k} {scalars[k]:.4g}" for k in keys if k in scalars)


class EvalCallback(L.Callback):
    """Scheduling, eval-mode bookkeeping, logging and checkpointed history shared by the evaluations."""

    name = "eval"
    title = "evaluation"  # what progress lines call it
    headline: tuple[str, ...] = ()  # scalars shown in its closing progress line

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

    def data_view(self, view: EvalView) -> EvalView:
        """The view this evaluation reads, given the trainer's (an evaluation on other data swaps it here)."""
        return view

    def plan(self, view: EvalView) -> tuple[str, int, int, str]:
        """(what it reads, e.g. "256 val samples"; samples at most; passes over the data; what follows them)."""
        most, text = _reads(view, "val", self.budget)
        return f"{text} samples", most, 1, ""

    # -- scheduling -----------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.run(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.at_fit_end and trainer.global_step != self._last_step and not trainer.sanity_checking:
            self.run(trainer, pl_module, when="end of fit")

    def run(self, trainer: L.Trainer, pl_module: Any, when: str | None = None) -> EvalResult | None:
        """Evaluate now (rank 0), log the result, keep it in the history; `when` names the moment in progress
        lines (default: the step)."""
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
        view = self.data_view(DataModuleView(trainer.datamodule, pl_module.device))
        reads, most, passes, then = self.plan(view)
        label = f"{when or f'step {trainer.global_step}'}: {self.title}"
        noisy = f"; under {FEW_SAMPLES} samples: a noisy figure" if most < FEW_SAMPLES else ""
        log.info("%s (%s%s)", label, reads, noisy)
        was_training = pl_module.training
        pl_module.eval()
        start = time.perf_counter()
        bar = progress(total=most, description=label, unit="samples", percent_step=EVAL_PERCENT_STEP)
        bar.percent_step = EVAL_PERCENT_STEP  # also as a stage of the fit's progress (mid-training runs)
        try:
            # fork_rng: an evaluation leaves the training's random streams (drop-path, dropout) where they were
            cuda = [pl_module.device] if pl_module.device.type == "cuda" else []
            with bar, torch.no_grad(), torch.random.fork_rng(devices=cuda):
                result = self.evaluate(pl_module, _CountingView(view, bar, passes, then))  # type: ignore[arg-type]
                bar.set_postfix(_headline(result, self.headline))
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
    title = "attention sink"
    headline = ("sink/vision_to_first_mean", "sink/text_to_first_mean")

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 32, batch_size: int = 32):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        return evaluations.sink_evaluation(module, view, budget=self.budget, batch_size=self.batch_size)


class PatchReadout(EvalCallback):
    """Top-k words per patch through the LM head (or text embeddings); accuracy where the data has label maps.

    `words`: the candidate words; None = the data's (the embedded captions' vocabulary, else its class names).
    """

    name = "readout"
    title = "patch readout"
    headline = ("readout/accuracy",)

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
    title = "zero-shot classification"
    headline = ("zero_shot/top1",)

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
    title = "captions"
    headline = ("captions/cider", "captions/cider_constant", "captions/bleu4")

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
    title = "linear probe"
    # the end-of-fit line carries every row of the report: encoder, random init, raw pixels, majority, chance
    headline = ("probe/linear_top1", "probe/attentive_top1", "probe/random_init_linear_top1",
                "probe/random_init_attentive_top1", "probe/pixels_linear_top1", "probe/majority_top1", "probe/chance")

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

    def data_view(self, view: EvalView) -> EvalView:
        if self.image_folder and isinstance(view, DataModuleView):
            from genlip_lit.data.transforms import Preprocessing

            dm = view.datamodule
            return ImageFolderView(self.image_folder, Preprocessing(dm.image_size, dm.mean, dm.std), view.device)
        return view

    def plan(self, view: EvalView) -> tuple[str, int, int, str]:
        train, train_text = _reads(view, "train", self.budget)
        test, test_text = _reads(view, "val", self.test_budget or self.budget)
        return f"{train_text} + {test_text} samples", train + test, 2, "features read, training the probes"

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        view = self.data_view(view)
        result = evaluations.probe_evaluation(
            module, view, budget=self.budget, test_budget=self.test_budget or self.budget,
            batch_size=self.batch_size, attentive_epochs=self.attentive_epochs, baselines=self.baselines,
            cached_baselines=self._baseline_rows,
        )
        if self.baselines and self._baseline_rows is None:
            self._baseline_rows = result.details.get("baselines") or None
        return result


class TransferProbe(EvalCallback):
    """Transfer to real images the encoder never saw: k-fold linear and attentive probes on a labelled set that
    an installed package ships (`dataset: digits`, scikit-learn's 1,797 handwritten digits; `pip install
    'genlip_lit[transfer]'`), every image held out once, each figure with its binomial standard error, beside
    the same architecture at random init, raw pixels, majority class and chance. Images are drawn at the data
    module's image size and normalisation. The baselines are computed at the first run and reused.
    `attentive_epochs` > 0 adds the attentive probe (0: linear only; 10 epochs triples the cost: on 2 busy cores
    the linear probes of encoder, random init and pixels took about 2 minutes, the attentive ones 3 more).
    `layer`: the hidden state of the image tower that the encoder and random-init rows read: "final" (default) the
    final LayerNorm output (`encode_patches`, what export gives), -2 the penultimate block's output (in GenLIP the
    last block's image outputs reach no loss), "mean" over blocks, or any index (`eval/features.py`).
    """

    name = "transfer"
    title = "transfer probe"
    headline = ("linear_top1", "random_init_linear_top1", "margin_in_se")

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, dataset: str = "digits", folds: int = 5,
                 attentive_epochs: int = 0, batch_size: int = 64, seed: int = 0, layer: int | str = "final"):
        from genlip_lit.eval.features import check_layer
        from genlip_lit.eval.real_images import REAL_SETS

        super().__init__(every_n_steps, at_fit_end, budget=1, batch_size=batch_size)
        if dataset not in REAL_SETS:
            raise ValueError(f"TransferProbe: unknown dataset {dataset!r}; known: {sorted(REAL_SETS)}")
        if folds < 2 or attentive_epochs < 0:
            raise ValueError("TransferProbe: folds >= 2 and attentive_epochs >= 0 needed")
        self.dataset, self.folds, self.attentive_epochs, self.seed = dataset, folds, attentive_epochs, seed
        self.layer = "final" if check_layer(layer) is None else layer  # a ValueError names what is accepted
        self.name = f"transfer_{dataset}"
        self.headline = tuple(f"{self.name}/{k}" for k in type(self).headline)
        self._baseline_rows: dict[str, Any] | None = None

    def _key_fields(self) -> dict[str, Any]:
        return {"every_n_steps": self.every_n_steps, "dataset": self.dataset, "folds": self.folds,
                "layer": self.layer}

    def data_view(self, view: EvalView) -> EvalView:
        if isinstance(view, DataModuleView):
            from genlip_lit.data.transforms import Preprocessing
            from genlip_lit.eval.real_images import RealImageView

            dm = view.datamodule
            return RealImageView(self.dataset, Preprocessing(dm.image_size or 224, dm.mean, dm.std), view.device)
        return view

    def plan(self, view: EvalView) -> tuple[str, int, int, str]:
        n = view.num_images  # type: ignore[attr-defined]
        return (f"{n:,} real images, {self.folds}-fold", n, 1,
                f"features read, training the probes on {self.folds} folds")

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        view = self.data_view(view)
        result = evaluations.transfer_evaluation(module, view, folds=self.folds, seed=self.seed,
                                                 attentive_epochs=self.attentive_epochs, batch_size=self.batch_size,
                                                 cached_baselines=self._baseline_rows, layer=self.layer)
        if self._baseline_rows is None:
            self._baseline_rows = result.details.get("baselines") or None
        return result
