"""Evaluation callbacks: when, on which rank, and where the results of `genlip_lit.eval` go during training.

The callbacks come from the registry of evaluations (`eval/registry.py`): `Evaluate` runs any registered one by
name (`evaluation: probe`, its own options under `options:`), and the named classes below (LinearProbe,
PatchReadout, ...: the class paths configs and checkpoints already name) are one line each, their options the
evaluation function's own. A new evaluation needs no change here.

Each callback runs its evaluation every `every_n_steps` optimizer steps (0: never during
training) and at the end of fit, on a bounded sample budget, in eval mode under `torch.no_grad()`, on global
rank 0 only; it logs scalars to every logger (and images, tables and text to the loggers that take them:
`callbacks/media.py`) at the trainer's global step and keeps its history in checkpoints. `genlip eval` runs the
same objects once on a checkpoint. Data comes as a view of the trainer's data module (`eval/data.py`), so class
names, words and templates are the data's own.

Each run says what it does (`genlip_lit.console.progress`: a rich row on a terminal, plain lines in a log file): a line
when it starts, the samples read so far with rate and ETA, and its headline figures when it ends:

    genlip: end of fit: linear probe (1,000 train + 500 val samples)
    genlip: end of fit: linear probe: 750/1,500 samples (50.0%), 61.2 samples/s, elapsed 0:12, ETA 0:12
    genlip: end of fit: linear probe: features read, training the probes
    genlip: end of fit: linear probe: done, 1,500 samples in 0:41 (36.6 samples/s), probe/linear_top1 0.912, ...

    trainer:
      callbacks:
        - class_path: genlip_lit.callbacks.PatchReadout
          init_args: {every_n_steps: 1350, budget: 256}
        - class_path: genlip_lit.callbacks.Evaluate    # any registered evaluation, by name
          init_args: {evaluation: sink, every_n_steps: 1350, options: {budget: 32}}
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from genlip_lit.console.progress import progress
from genlip_lit.eval import evaluations  # registers the built-in evaluations
from genlip_lit.eval.data import DataModuleView, EvalView
from genlip_lit.eval.registry import Evaluation
from genlip_lit.eval.result import MIN_RELIABLE_IMAGES, EvalResult

log = logging.getLogger(__name__)

EVAL_PERCENT_STEP = 25.0  # an evaluation takes seconds to a few minutes: a line per quarter (or per 30 s) is enough

__all__ = ["AttentionSink", "CaptionSamples", "EvalCallback", "EvalResult", "Evaluate", "LinearProbe", "PatchReadout",
           "TransferProbe", "ZeroShot", "evaluation_callback"]


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
    shown = ", ".join(f"{k} {scalars[k]:.4g}" for k in keys if k in scalars)
    return shown or result.details.get("note", "")


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
        noisy = f"; under {MIN_RELIABLE_IMAGES} samples: a noisy figure" if 0 < most < MIN_RELIABLE_IMAGES else ""
        log.info("%s (%s%s)", label, reads, noisy)
        was_training = pl_module.training
        pl_module.eval()
        start = time.perf_counter()
        bar = progress(total=most or None, description=label, unit="samples", percent_step=EVAL_PERCENT_STEP)
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


class Evaluate(EvalCallback):
    """Runs the registered evaluation named `evaluation` (`eval/registry.py`; the built-in ones:
    `genlip_lit.eval.evaluations`) on this schedule; `options`: its own (the evaluation function's keyword
    arguments, e.g. `{budget: 64}`; unset ones keep the function's defaults).

    Args:
        evaluation: a registered evaluation's name (probe, readout, zero_shot, captions, sink, transfer, or your own)
        every_n_steps: run every this many optimizer steps (0: only at the end of fit)
        at_fit_end: run once more when fit ends
        options: the evaluation's own options
    """

    def __init__(self, evaluation: str, every_n_steps: int = 0, at_fit_end: bool = True,
                 options: dict[str, Any] | None = None):
        self._set_up(evaluations.get(evaluation, where=type(self).__name__), every_n_steps, at_fit_end, options)

    def _set_up(self, spec: Evaluation, every_n_steps: int, at_fit_end: bool, options: dict[str, Any] | None) -> None:
        opts = spec.resolve(options, where=type(self).__name__)  # unknown names; its check's ValueError
        # budget and batch_size are checked by the scheduler; an evaluation without them reads what its data holds
        super().__init__(every_n_steps, at_fit_end, opts.get("budget", 1), opts.get("batch_size", 64))
        self.spec = spec
        self.options = opts
        self.name = spec.tag_prefix(opts)
        self.title = spec.title
        self.headline = spec.headline(opts)
        self._baseline_rows: dict[str, Any] | None = None  # computed at the first run (they do not train)

    def __getattr__(self, name: str) -> Any:  # cb.k, cb.image_folder, ...: its options, read-only
        options = self.__dict__.get("options") or {}
        if name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _current_options(self) -> dict[str, Any]:
        # budget and batch_size live on the scheduler (EvalCallback) too: a changed attribute wins
        return {**self.options, **{k: getattr(self, k) for k in ("budget", "batch_size") if k in self.options}}

    def _key_fields(self) -> dict[str, Any]:
        return {"evaluation": self.spec.name, **self._schedule_key()}

    def _schedule_key(self) -> dict[str, Any]:
        return {"every_n_steps": self.every_n_steps, **{k: self.options[k] for k in self.spec.key}}

    def data_view(self, view: EvalView) -> EvalView:
        return self.spec.data(view, self._current_options())

    def plan(self, view: EvalView) -> tuple[str, int, int, str]:
        opts = self._current_options()
        if self.spec.plan is not None:
            return self.spec.plan(view, opts)
        if not self.spec.reads:
            return "its own data", 0, 0, self.spec.then
        parts = [_reads(view, split, opts[option] or opts["budget"]) for split, option in self.spec.reads]
        return (" + ".join(text for _, text in parts) + " samples", sum(n for n, _ in parts), len(parts),
                self.spec.then)

    def evaluate(self, module: Any, view: EvalView) -> EvalResult:
        result = self.spec.run(module, self.data_view(view), self._current_options(), self._baseline_rows)
        if self.spec.carries and self._baseline_rows is None:
            self._baseline_rows = result.details.get("baselines") or None
        return result


class _Named(Evaluate):
    """The base of `evaluation_callback`'s classes: the evaluation is fixed, its options are init arguments."""

    evaluation = ""

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, **options: Any):
        self._set_up(evaluations.get(self.evaluation), every_n_steps, at_fit_end, options)

    def _key_fields(self) -> dict[str, Any]:  # the class names the evaluation (and keeps older checkpoints' keys)
        return self._schedule_key()


def evaluation_callback(class_name: str, evaluation: str) -> type[Evaluate]:
    """A callback class for the registered `evaluation`, named `class_name` in the calling module, whose init
    arguments are `every_n_steps`, `at_fit_end` and the evaluation's options (defaults, types and help from its
    function, so `--trainer.callbacks.help` and jsonargparse's checks see them). One line declares one:

        LinearProbe = evaluation_callback("LinearProbe", "probe")
    """
    spec = evaluations.get(evaluation)
    kw = inspect.Parameter.KEYWORD_ONLY
    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", plain), inspect.Parameter("every_n_steps", plain, default=0, annotation=int),
              inspect.Parameter("at_fit_end", plain, default=True, annotation=bool),
              *(inspect.Parameter(o.name, kw, default=o.default, annotation=o.annotation) for o in spec.options.values())]
    args = ["every_n_steps: run every this many optimizer steps (0: only at the end of fit)",
            "at_fit_end: run once more when fit ends", *(f"{o.name}: {o.help}" for o in spec.options.values())]
    doc = (f"{spec.summary}\n\nThe registered `{spec.name}` evaluation "
           f"({spec.function.__module__}.{spec.function.__qualname__}) on a training schedule, and in `genlip eval`."
           "\n\nArgs:\n" + "\n".join(f"    {line}" for line in args) + "\n")

    def __init__(self: Any, every_n_steps: int = 0, at_fit_end: bool = True, **options: Any) -> None:
        _Named.__init__(self, every_n_steps, at_fit_end, **options)

    __init__.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    __init__.__doc__ = doc
    __init__.__qualname__ = f"{class_name}.__init__"
    caller = sys._getframe(1).f_globals.get("__name__", __name__)
    return type(class_name, (_Named,), {"__init__": __init__, "__doc__": doc, "__module__": caller,
                                        "__qualname__": class_name, "evaluation": evaluation})


# The class paths shipped configs and saved checkpoints name (genlip_lit.callbacks.NAME): one line each.
LinearProbe = evaluation_callback("LinearProbe", "probe")  # a linear AND an attentive probe, with baseline rows
PatchReadout = evaluation_callback("PatchReadout", "readout")
ZeroShot = evaluation_callback("ZeroShot", "zero_shot")
CaptionSamples = evaluation_callback("CaptionSamples", "captions")  # greedy captions scored by CIDEr-D and BLEU-4
AttentionSink = evaluation_callback("AttentionSink", "sink")
TransferProbe = evaluation_callback("TransferProbe", "transfer")
