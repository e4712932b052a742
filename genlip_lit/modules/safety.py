"""What keeps a training run recoverable, shared by every genlip module through `EncoderModule`.

    python -m pytest tests/modules/test_safety.py -q

- Non-finite steps: a NaN/inf loss (or, outside fp16 loss scaling, a NaN/inf gradient) in any micro-batch of an
  optimizer step makes no optimizer update and is counted in `train/nonfinite_steps`. After `max_nonfinite_steps` such steps in a row (default 8; set it
  with the `genlip_lit.callbacks.NonFiniteGuard` callback, 0 = never stop) the run saves its still-finite weights
  as `last.ckpt` and stops with one line naming the step and the likely causes.
- Training randomness: the torch (CPU and current CUDA device), numpy and python RNGs are swapped in for each
  training step and out after it, so whatever else draws from them between steps (validation, loader start-up,
  callbacks) does not shift the training stream; their states at the last step go into every checkpoint
  (`genlip_rng`, one entry per rank) and come back on resume: a resumed run draws the same drop-path masks (and
  the captioner's parallel-prediction coins) as the run that never stopped.
- No host sync per step: the verdict stays on the device. With an optimizer that skips a step on a device flag
  (torch's fused Adam/AdamW/SGD, what `EncoderModule` uses on CUDA: `optimizer.found_inf`, as the AMP grad scaler
  uses it), the step never waits for the GPU; the counters are device tensors copied to the host without
  blocking and read once the copy has landed (on CUDA a step or two later, so a stop may come that much later;
  on CPU at once). Other optimizers and fp16 loss scaling read the verdict on the host each step. The RNG
  window keeps the generators' native states (host-side, CUDA's too: a seed and an offset) and converts them to
  checkpoint data only when a checkpoint is written.
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

from genlip_lit.checkpoints.integrity import SHA_KEY, first_nonfinite, verify_weights, weights_sha256
from genlip_lit.errors import GenLIPUserError

log = logging.getLogger(__name__)

RNG_KEY = "genlip_rng"
NONFINITE_KEY = "genlip_nonfinite_steps"
FP16_SCALED = ("16-mixed", "16", "16-true")  # the GradScaler owns overflowing gradients there
GUARD_TOTAL, GUARD_RUN, GUARD_RUN_START = 0, 1, 2  # the non-finite guard's device counters


# ---------------------------------------------------------------------------------------------- RNG states
def capture_native_rng(device: torch.device | None = None) -> tuple:
    """The global RNG states in the generators' own forms (cheap: what the per-step RNG window swaps)."""
    cuda = torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None
    return torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda


def restore_native_rng(native: tuple, device: torch.device | None = None) -> None:
    torch_state, numpy_state, python_state, cuda = native
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def plain_rng(native: tuple) -> dict[str, Any]:
    """A `capture_native_rng` state as plain data (tensors, ints, floats): what `torch.load(weights_only=True)`
    reads."""
    torch_state, (kind, keys, pos, has_gauss, gauss), (version, internal, gauss_next), cuda = native
    state: dict[str, Any] = {
        "torch": torch_state.clone(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if cuda is not None:
        state["cuda"] = cuda
    return state


def native_rng(state: dict[str, Any]) -> tuple:
    """The `plain_rng` data back in the generators' own forms (the CUDA state only when it was saved)."""
    n, p = state["numpy"], state["python"]
    numpy_state = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    python_state = (p["version"], tuple(int(i) for i in p["internal"].tolist()), p["gauss_next"])
    return state["torch"], numpy_state, python_state, state.get("cuda")


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG states as plain data (`plain_rng`)."""
    return plain_rng(capture_native_rng(device))


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Set the global RNGs to a `capture_rng` state (the CUDA one only when both sides have it)."""
    restore_native_rng(native_rng(state), device)


def _finite_checkpoint(path: str, allow: tuple[str, ...] = ()) -> bool:
    """An existing last.ckpt may be named as "the last finite weights" only when it is one: readable weights-only,
    matching its digest, finite (a run resumed from a bad file, or an older diverged run, may have left it)."""
    from genlip_lit.checkpoints.integrity import read_checkpoint

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
            state = {
                "bad_in_window": None,  # device bool: a NaN/inf loss in this optimizer step's micro-batches
                "refused_in_window": False,  # host mode: a loss read as NaN/inf and replaced (no backward ran)
                "counts": None,  # device int64 [nonfinite total, run length, run start step] (GUARD_* indices)
                "loaded_total": 0,  # the nonfinite total of the checkpoint resumed from, until `counts` exists
                "pending": None,  # (host buffer, its numpy view, CUDA event or None): a copy of `counts` in flight
                "warned_run": None, "stop": None, "native_rng": None, "outside_rng": None,
            }
            self.__dict__["_safety_state"] = state
        return state

    @property
    def nonfinite_steps(self) -> int:
        """Training steps skipped so far because their loss or gradients were NaN/inf (one host read)."""
        state = self._safety()
        counts = state["counts"]
        return int(counts[GUARD_TOTAL]) if counts is not None else int(state["loaded_total"])

    def _world_size(self) -> int:
        trainer = getattr(self, "_trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def _distributed(self) -> bool:
        return self._world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

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
        its batch is empty under DDP (Lightning cannot skip backward there, and every rank must reduce)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return torch.zeros((), device=self.device, requires_grad=True)
        return torch.stack([p.reshape(-1)[:1].sum() for p in params]).sum() * 0.0

    def guard_on_device(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """True when the optimizer skips a step on a device flag (torch's fused optimizers) and no fp16 grad scaler
        owns that flag: the guard then never reads its verdict on the host during a step. Not under FSDP2, whose
        sharded (DTensor) parameters the plain flag tensor cannot be mixed with in the fused kernel."""
        if getattr(self, "_fsdp2_applied", False):
            return False
        if optimizer is None:
            trainer = getattr(self, "_trainer", None)
            optimizers = trainer.optimizers if trainer is not None else []
            optimizer = optimizers[0] if len(optimizers) == 1 else None
        precision = str(getattr(getattr(self, "_trainer", None), "precision", ""))
        return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and precision not in FP16_SCALED

    def skip_if_nonfinite(self, loss: Tensor, nonfinite: bool | None = None) -> Tensor | None:
        """Note whether `loss` is NaN/inf (`nonfinite`: the caller's global verdict, under DDP); return what the
        objective's training_step returns.

        The optimizer step of a window with a NaN/inf loss makes no update (`on_before_optimizer_step`). With the
        verdict on the device the loss is returned as is (its gradients are dropped there). Otherwise the verdict
        is read here and the loss is replaced: None in one process (no backward), a zero-gradient loss under DDP
        (every rank must reduce)."""
        if loss.is_meta:  # a meta-device trace (`genlip plan`): shapes only, no value to check
            return loss
        state = self._safety()
        on_device = self.guard_on_device()
        if nonfinite is None and not on_device:  # read here; under DDP every rank's (so all count it alike)
            flag = (~torch.isfinite(loss.detach()).all()).to(torch.float64)
            nonfinite = bool(self.step_totals([flag])[0] > 0) if self._world_size() > 1 else bool(flag)
        if nonfinite is not None:  # a host bool: nothing to wait for
            bad = torch.tensor(bool(nonfinite)).to(loss.device, non_blocking=True)
        else:  # stays on the device (made global across ranks in on_before_optimizer_step)
            bad = ~torch.isfinite(loss.detach()).all()
        previous = state["bad_in_window"]
        state["bad_in_window"] = bad if previous is None else previous | bad
        if on_device or not nonfinite:
            return loss
        state["refused_in_window"] = True
        return None if self._world_size() == 1 else self.zero_gradient_loss()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """No update from a step whose loss (any micro-batch) or gradients are NaN/inf: with a fused optimizer,
        `optimizer.found_inf` (its device-side skip: parameters, moments and step count untouched), otherwise the
        gradients are dropped (AdamW leaves parameters without one untouched, momentum and weight decay
        included). A step whose micro-batches were all empty is skipped too, but neither counts nor ends a run."""
        state = self._safety()
        on_device = self.guard_on_device(optimizer)
        bad, refused = state["bad_in_window"], state["refused_in_window"]
        state["bad_in_window"], state["refused_in_window"] = None, False
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:  # no backward ran: every micro-batch was empty, or (host mode) refused as NaN/inf
            if refused:
                self._count_step(bad, int(self.trainer.global_step) + 1)
            self._drop_gradients(optimizer)
            return
        device = grads[0].device
        bad = torch.zeros((), dtype=torch.bool, device=device) if bad is None else bad.to(device)
        if on_device and self._distributed():  # a NaN loss on any rank skips the step on all of them
            flag = bad.to(torch.float32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # no barrier: nothing waits
            bad = flag > 0
        if str(self.trainer.precision) not in FP16_SCALED:  # (the fp16 grad scaler owns overflowing gradients)
            largest = torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))
            if hasattr(largest, "full_tensor"):  # FSDP2: sharded gradients give a DTensor
                largest = largest.full_tensor()
            bad = bad | ~torch.isfinite(largest.to(device))  # (DDP: gradients are already every rank's)
        self._count_step(bad, int(self.trainer.global_step) + 1)
        if on_device:
            optimizer.found_inf = bad.to(torch.float32)  # read by the fused kernel: 1 = leave everything as is
        elif bool(self.step_totals([bad.to(torch.float64)])[0] > 0) if self._world_size() > 1 else bool(bad):
            self._drop_gradients(optimizer)

    @staticmethod
    def _drop_gradients(optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        if getattr(optimizer, "found_inf", None) is not None:
            optimizer.found_inf = None

    def _count_step(self, bad: Tensor, step: int) -> None:
        """Update the device counters with this optimizer step's verdict (1-based `step`, as in checkpoint names),
        log the total, and start copying them to the host without waiting."""
        state = self._safety()
        counts = state["counts"]
        if counts is None or counts.device != bad.device:
            base = counts.to(bad.device) if counts is not None else torch.tensor(
                [int(state["loaded_total"]), 0, 0], dtype=torch.int64)
            counts = state["counts"] = base.to(bad.device)
        bad = bad.to(torch.int64)
        counts[GUARD_TOTAL] += bad
        counts[GUARD_RUN] = (counts[GUARD_RUN] + 1) * bad  # 0 after a finite step
        # the first step of a run: this one when the run is 1 long, else the one already noted
        counts[GUARD_RUN_START] = torch.where(counts[GUARD_RUN] == 1, step, counts[GUARD_RUN_START]) * bad
        self.log("train/nonfinite_steps", counts[GUARD_TOTAL].to(torch.float32))
        if state["pending"] is None:  # (one copy in flight at a time: its buffer is reused once it is read)
            cuda = counts.device.type == "cuda"
            buffer = state.get("host_buffer")
            if buffer is None or buffer[0].is_pinned() != cuda:
                host = torch.empty(len(counts), dtype=torch.int64, pin_memory=cuda)
                buffer = state["host_buffer"] = (host, host.numpy())
            buffer[0].copy_(counts, non_blocking=cuda)
            event = torch.cuda.Event() if cuda else None
            if event is not None:
                event.record()
            state["pending"] = (*buffer, event)

    def _read_counts(self) -> None:
        """Take the latest copy of the counters once it has landed (never waits): warn when a run of non-finite
        steps starts, note the stop when one reaches `max_nonfinite_steps`."""
        state = self._safety()
        pending = state["pending"]
        if pending is None or (pending[2] is not None and not pending[2].query()):
            return
        state["pending"] = None
        total, run, start = (int(v) for v in pending[1])
        if run > 0 and state["warned_run"] != start:
            state["warned_run"] = start
            log.warning("step %d: NaN/inf loss or gradients, no update (further ones are counted in "
                        "train/nonfinite_steps)", start)
        limit = int(self.max_nonfinite_steps or 0)
        if limit > 0 and run >= limit and state["stop"] is None:
            state["stop"] = (start, start + run - 1, run)

    def _stop_if_diverged(self) -> None:
        self._read_counts()
        stop = self._safety()["stop"]
        if stop is None:
            return
        first, last, run = stop
        trainer = self.trainer
        saved = self._save_finite_last(trainer)
        causes = [f"learning rate too high (lr={getattr(self, 'lr', '?')})", "bad data (see data/skipped_samples)"]
        if str(trainer.precision) in FP16_SCALED:
            causes.append(f"fp16 overflow (precision {trainer.precision}: use bf16-mixed or 32-true)")
        raise GenLIPUserError(
            f"training stopped at step {int(trainer.global_step)}: the loss or gradients were NaN/inf for {run} "
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
    # (native generator states, host-side: swapping them waits for no device; converted only for checkpoints)
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        state = self._safety()
        device = getattr(self, "device", None)
        state["outside_rng"] = capture_native_rng(device)
        if state["native_rng"] is not None:
            restore_native_rng(state["native_rng"], device)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        state = self._safety()
        device = getattr(self, "device", None)
        if state["outside_rng"] is not None:
            state["native_rng"] = capture_native_rng(device)
            restore_native_rng(state["outside_rng"], device)
            state["outside_rng"] = None
        self._stop_if_diverged()

    def _training_rng_now(self) -> dict[str, Any]:
        """The training stream's state: live inside a step's window (checkpoints are saved there), else stored."""
        state = self._safety()
        if state["outside_rng"] is not None or state["native_rng"] is None:
            return capture_rng(getattr(self, "device", None))
        return plain_rng(state["native_rng"])

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
        state["loaded_total"] = int(checkpoint.get(NONFINITE_KEY, 0) or 0)
        state["counts"], state["pending"] = None, None
        ranks = checkpoint.get(RNG_KEY)
        if isinstance(ranks, list) and ranks:
            rank = int(trainer.global_rank) if trainer is not None else 0
            if len(ranks) != self._world_size() and trainer is not None:
                log.warning("%s holds RNG states of %d ranks, this run has %d: ranks reuse them in turn, so "
                            "randomness differs from the original run", source, len(ranks), self._world_size())
            state["native_rng"] = native_rng(ranks[rank % len(ranks)])
