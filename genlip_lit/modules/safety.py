"""What keeps a training run recoverable, shared by every genlip module through `EncoderModule`.

    python -m pytest tests/test_safety.py -q

- Non-finite steps: a NaN/inf loss (or, outside fp16 loss scaling, a NaN/inf gradient) makes no optimizer update
  and is counted in `train/nonfinite_steps`. After `max_nonfinite_steps` such steps in a row (default 8; set it
  with the `genlip_lit.callbacks.NonFiniteGuard` callback, 0 = never stop) the run saves its still-finite weights
  as `last.ckpt` and stops with one line naming the step and the likely causes.
- Training randomness: the torch (CPU and current CUDA device), numpy and python RNGs are swapped in for each
  training step and out after it, so whatever else draws from them between steps (validation, loader start-up,
  callbacks) does not shift the training stream; their states at the last step go into every checkpoint
  (`genlip_rng`, one entry per rank) and come back on resume: a resumed run draws the same drop-path masks (and
  the captioner's parallel-prediction coins) as the run that never stopped.
- Checkpoint fields: the weights' sha256 and the RNG states are written by `save_safety_state` and checked and
  restored by `load_safety_state` (also on Lightning's own `--ckpt_path` resume).
- Global sums: `step_totals` adds per-rank numbers over all ranks in one collective (identity in one process).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genlip_lit.errors import GenLIPUserError
from genlip_lit.integrity import SHA_KEY, first_nonfinite, verify_weights, weights_sha256

log = logging.getLogger(__name__)

RNG_KEY = "genlip_rng"
NONFINITE_KEY = "genlip_nonfinite_steps"
FP16_SCALED = ("16-mixed", "16", "16-true")  # the GradScaler owns overflowing gradients there


# ---------------------------------------------------------------------------------------------- RNG states
def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG states as plain data (tensors, ints, floats): what `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Set the global RNGs to a `capture_rng` state (the CUDA one only when both sides have it)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(i) for i in p["internal"].tolist()), p["gauss_next"]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _finite_checkpoint(path: str, allow: tuple[str, ...] = ()) -> bool:
    """An existing last.ckpt may be named as "the last finite weights" only when it is one: readable weights-only,
    matching its digest, finite (a run resumed from a bad file, or an older diverged run, may have left it)."""
    from genlip_lit.integrity import read_checkpoint

    if not os.path.isfile(path):
        return False
    try:
        verify_weights(read_checkpoint(path, mmap=True, allow=allow), path)
    except GenLIPUserError as err:
        log.warning("not naming %s as the last finite weights: %s", path, err)
        return False
    return True


class TrainingSafety:
    """Mixin of `EncoderModule` (a LightningModule): non-finite guard, training RNG, checkpoint fields."""

    max_nonfinite_steps: int = 8  # non-finite steps in a row that stop the run; 0 = never stop

    # ------------------------------------------------------------------ small state, created on first use
    def _safety(self) -> dict[str, Any]:
        state = self.__dict__.get("_safety_state")
        if state is None:
            state = {"nonfinite_total": 0, "run": 0, "run_start": None, "finite_in_window": 0,
                     "nonfinite_in_window": 0, "stop": None, "train_rng": None, "outside_rng": None}
            self.__dict__["_safety_state"] = state
        return state

    @property
    def nonfinite_steps(self) -> int:
        """Training steps skipped so far because their loss or gradients were NaN/inf."""
        return self._safety()["nonfinite_total"]

    def _world_size(self) -> int:
        trainer = getattr(self, "_trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    # ------------------------------------------------------------------ global sums
    def step_totals(self, values: list[Tensor | float | int]) -> Tensor:
        """float64 vector of `values` summed over all ranks (one collective; as given in one process)."""
        device = getattr(self, "device", torch.device("cpu"))
        totals = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(())
                              for v in values])
        if self._world_size() > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        return totals

    # ------------------------------------------------------------------ non-finite steps
    def zero_gradient_loss(self) -> Tensor:
        """A loss whose gradient is exactly zero for every trainable parameter: what a rank backpropagates when
        the step is skipped under DDP (Lightning cannot skip backward there, and every rank must reduce)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return torch.zeros((), device=self.device, requires_grad=True)
        return torch.stack([p.reshape(-1)[:1].sum() for p in params]).sum() * 0.0

    def skip_if_nonfinite(self, loss: Tensor, nonfinite: bool | None = None) -> Tensor | None:
        """`loss`, or a skipped step when it is NaN/inf on any rank (`nonfinite`: the caller's global verdict).

        Skipped: None in one process (Lightning then runs no backward and the optimizer finds no gradient), a
        zero-gradient loss under DDP (see `on_before_optimizer_step`, which drops those gradients)."""
        if nonfinite is None:
            flag = (~torch.isfinite(loss.detach())).to(torch.float64).reshape(())
            nonfinite = bool(self.step_totals([flag])[0] > 0) if self._world_size() > 1 else bool(flag)
        state = self._safety()
        if nonfinite:
            state["nonfinite_total"] += 1
            state["nonfinite_in_window"] += 1
        else:
            state["finite_in_window"] += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        if not nonfinite:
            return loss
        return None if self._world_size() == 1 else self.zero_gradient_loss()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """No update from a skipped step: drop every gradient (AdamW leaves parameters without one untouched,
        momentum and weight decay included). Also skips a step whose gradients are NaN/inf. Counts optimizer
        steps skipped in a row (with gradient accumulation, a step is skipped when all its micro-batches were)."""
        state = self._safety()
        skipped, nonfinite = state["finite_in_window"] == 0, state["nonfinite_in_window"] > 0
        state["finite_in_window"] = state["nonfinite_in_window"] = 0
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not skipped and grads and str(self.trainer.precision) not in FP16_SCALED:
            largest = torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))
            if hasattr(largest, "full_tensor"):  # FSDP2: sharded gradients give a DTensor
                largest = largest.full_tensor()
            bad = (~torch.isfinite(largest)).to(torch.float64)
            if bool(self.step_totals([bad])[0] > 0):
                skipped = nonfinite = True
                state["nonfinite_total"] += 1
        if skipped:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        if not skipped:  # an update is made: the run of non-finite steps is over
            state["run"], state["run_start"] = 0, None
        elif nonfinite:  # (a step of empty batches is skipped too, but neither counts nor ends a run)
            self._note_nonfinite_step()

    def _note_nonfinite_step(self) -> None:
        state = self._safety()
        step = int(self.trainer.global_step) + 1  # 1-based, as in checkpoint names (step=N: N steps done)
        state["run"] += 1
        if state["run_start"] is None:
            state["run_start"] = step
            log.warning("step %d: NaN/inf loss or gradients, no update (further ones are counted in "
                        "train/nonfinite_steps)", step)
        limit = int(self.max_nonfinite_steps or 0)
        if limit > 0 and state["run"] >= limit and state["stop"] is None:
            state["stop"] = (state["run_start"], step)

    def _stop_if_diverged(self) -> None:
        stop = self._safety()["stop"]
        if stop is None:
            return
        first, last = stop
        trainer = self.trainer
        saved = self._save_finite_last(trainer)
        causes = [f"learning rate too high (lr={getattr(self, 'lr', '?')})", "bad data (see data/skipped_samples)"]
        if str(trainer.precision) in FP16_SCALED:
            causes.append(f"fp16 overflow (precision {trainer.precision}: use bf16-mixed or 32-true)")
        raise GenLIPUserError(
            f"training stopped at step {last}: the loss or gradients were NaN/inf for {self._safety()['run']} "
            f"steps in a row (steps {first}-{last}, no update made from them); likely causes: {', '.join(causes)}; "
            + (f"last finite weights: {saved}" if saved else "no checkpoint was written")
        )

    def _save_finite_last(self, trainer: Any) -> str | None:
        """Write last.ckpt now (weights are finite: skipped steps changed nothing); keep an older one otherwise."""
        callback = getattr(trainer, "checkpoint_callback", None)
        if callback is None or not getattr(callback, "save_last", False) or not getattr(callback, "dirpath", None):
            return None
        path = os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
        if first_nonfinite(self.state_dict()) is None:
            if trainer.is_global_zero and os.path.islink(path):  # save_last="link": never write through it
                os.remove(path)
            trainer.save_checkpoint(path, weights_only=False)  # (a full checkpoint: optimizer, loops)
            return path
        own = tuple(f"{type(x).__module__}.{type(x).__qualname__}" for x in (self, getattr(self, "tokenizer", None))
                    if x is not None)  # this run wrote it: its own classes are trusted by name
        return path if _finite_checkpoint(path, own) else None

    # ------------------------------------------------------------------ training RNG window
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        state = self._safety()
        device = getattr(self, "device", None)
        state["outside_rng"] = capture_rng(device)
        if state["train_rng"] is not None:
            restore_rng(state["train_rng"], device)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        state = self._safety()
        device = getattr(self, "device", None)
        if state["outside_rng"] is not None:
            state["train_rng"] = capture_rng(device)
            restore_rng(state["outside_rng"], device)
            state["outside_rng"] = None
        self._stop_if_diverged()

    def _training_rng_now(self) -> dict[str, Any]:
        """The training stream's state: live inside a step's window (checkpoints are saved there), else stored."""
        state = self._safety()
        if state["outside_rng"] is not None or state["train_rng"] is None:
            return capture_rng(getattr(self, "device", None))
        return state["train_rng"]

    # ------------------------------------------------------------------ checkpoint fields
    def save_safety_state(self, checkpoint: dict[str, Any]) -> None:
        """sha256 of the weights, the training RNG states of every rank, the non-finite step count."""
        rng = self._training_rng_now()
        ranks = [rng]
        trainer = getattr(self, "_trainer", None)
        if self._world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, {k: (v.cpu() if isinstance(v, Tensor) else v)
                                                        for k, v in rng.items()})
        checkpoint[RNG_KEY] = ranks
        checkpoint[NONFINITE_KEY] = self.nonfinite_steps
        if trainer is None or trainer.is_global_zero:  # only rank 0 writes the file
            state = checkpoint.get("state_dict")
            if isinstance(state, dict) and all(isinstance(v, Tensor) and not hasattr(v, "full_tensor")
                                               for v in state.values()):
                checkpoint[SHA_KEY] = weights_sha256(state)

    def load_tokenizer_state(self, checkpoint: dict[str, Any]) -> None:
        """The stored tokenizer state (e.g. a compact vocabulary), into this module's tokenizer: refused when the
        checkpoint's tokenizer is of another class or the state would change the vocabulary the model was built
        for (a resume with other tokenizer settings, or an edited file: otherwise an IndexError mid-run)."""
        spec = checkpoint.get("genlip_tokenizer")
        tokenizer = getattr(self, "tokenizer", None)
        if spec is None or tokenizer is None:
            return
        source = self._checkpoint_source()
        ours = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
        if not isinstance(spec, dict) or spec.get("class_path") != ours:
            stored = spec.get("class_path") if isinstance(spec, dict) else spec
            raise GenLIPUserError(f"{source} holds a {stored!r} tokenizer, this model has {ours!r}")
        size = tokenizer.vocab_size
        tokenizer.load_state_dict(spec.get("state") or {})
        if tokenizer.vocab_size != size:
            raise GenLIPUserError(
                f"{source} was trained with a {tokenizer.vocab_size}-token vocabulary, this model has {size}: use "
                "the tokenizer settings (e.g. compact_corpus) of the run that wrote it"
            )

    def _checkpoint_source(self) -> str:
        trainer = getattr(self, "_trainer", None)
        return str(getattr(trainer, "ckpt_path", None) or "the checkpoint") if trainer is not None else "checkpoint"

    def load_safety_state(self, checkpoint: dict[str, Any]) -> None:
        """Refuse corrupted or non-finite weights (also on `--ckpt_path` resume); take back RNG and counters."""
        trainer = getattr(self, "_trainer", None)
        source = self._checkpoint_source()
        verify_weights(checkpoint, source)
        state = self._safety()
        state["nonfinite_total"] = int(checkpoint.get(NONFINITE_KEY, 0) or 0)
        ranks = checkpoint.get(RNG_KEY)
        if isinstance(ranks, list) and ranks:
            rank = int(trainer.global_rank) if trainer is not None else 0
            if len(ranks) != self._world_size() and trainer is not None:
                log.warning("%s holds RNG states of %d ranks, this run has %d: ranks reuse them in turn, so "
                            "randomness differs from the original run", source, len(ranks), self._world_size())
            state["train_rng"] = ranks[rank % len(ranks)]
