"""What every objective shares: one optimizer/schedule signature, `init_from`, and the encoder contract.

    python -m pytest tests/modules/test_base.py -q

A new objective is one LightningModule subclass (plus its plain-torch model), registered with
`genlip_lit.checkpoints.registry.register`, and one overlay YAML. It takes its own arguments and passes `**kwargs`
to `EncoderModule.__init__`, which owns the training arguments every objective accepts under the same YAML keys
(`lr`, `min_lr`, `weight_decay`, `betas`, `warmup_ratio`, `warmup_steps`, `init_from`). The model
(`optimized_model()`) declares its own training metadata (`no_weight_decay()`, `vision_tower()`, `shard_units()`),
so the optimizer, FSDP and `genlip export` never learn an objective's name; `data_settings()` is what the data
module is told through `GenLIPDataModule.connect`.

Every objective's training steps are accounted for in one place (`on_train_batch_start`, below): the running data
totals of the batches (`data/skipped_samples`, `data/truncated_captions`, `data/unknown_tokens`), the packing
statistics of packed batches (`data/packing_efficiency`, `data/unpacked_efficiency`) and `train/lr`; the totals are
global sums under DDP and travel in checkpoints (`genlip_<name>`), so a resumed run counts on from where it stopped.
They stay on the device between steps: nothing in this path waits for the GPU (modules/safety.py, same rule).

The encoder contract is the only way callbacks and evaluation code reach a model, so they work the same for
GenLIP, the captioner and the contrastive baselines:
- every objective implements `encode_patches` (frozen patch features) and `num_vision_params`, and inherits
  `encode_pooled` (mean of the patches), `vision_tower` (its model's, for `genlip export`), `objective_name` and
  `is_generative` (False) unless it has better answers;
- the capabilities an evaluation may ask for, each raising NotImplementedError where the objective has none (the
  evaluation then reports a skip naming it): `generate_captions` and `score_captions` (generative models, with
  `is_generative` True), `text_match_scores` (zero-shot), `patch_word_scores` (patch readout) and
  `attention_maps` (attention-sink monitor).

What `genlip plan` needs (genlip_lit/plan/objective.py), so that any registered objective is planned without
edits there: the class is built from its config's arguments under `torch.device("meta")` with its
`weight_sources` set to None (no weights read), so `__init__` must not read tensor values; `config` is the
GenLIPConfig of its network (patch grid, registers, `grad_checkpointing`); `data_settings()["caption_encoder"]`
is its text format; `training_step(batch, 0)` on a fixed-resolution `Batch` of meta tensors, with no trainer
attached, returns the loss training backpropagates (logging is then a no-op and `skip_if_nonfinite` passes a meta
loss through); the network's `shard_units()` are the blocks activation checkpointing recomputes.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.schedule import warmup_cosine
from genlip_lit.modules.safety import TrainingSafety

__all__ = ["DATA_COUNTERS", "EncoderModule", "param_groups", "warmup_cosine"]

# running totals every training step adds to: logged as data/<name>, saved in checkpoints as genlip_<name>,
# each counted per batch by the `Batch` field named here (objectives whose batches lack it count 0)
DATA_COUNTERS = {"skipped_samples": "num_skipped", "truncated_captions": "num_truncated",
                 "unknown_tokens": "num_unknown"}


def packing_sums(segment_ids: Tensor, num_samples: int) -> Tensor:
    """int64 [useful tokens, token slots, slots if every sample were padded to the longest] of a packed batch,
    computed on its device without a host read (`data/packing.py::packing_stats` is the host-side twin)."""
    flat = segment_ids.reshape(-1).long()
    lengths = torch.zeros(num_samples + 1, dtype=torch.int64, device=flat.device)
    lengths.scatter_add_(0, flat.clamp(max=num_samples), torch.ones_like(flat))
    useful = lengths[1:].sum()
    longest = lengths[1:].max() if num_samples else useful
    slots = torch.full((), flat.numel(), dtype=torch.int64, device=flat.device)
    return torch.stack([useful, slots, longest * num_samples])


def param_groups(model: nn.Module, weight_decay: float, exempt: set[str] | None = None,
                 scope: str = "matrices") -> list[dict]:
    """Split parameters into decayed and non-decayed groups.

    scope "matrices": 1-D tensors (norms, biases, LayerScale) and the names in `exempt` (default: the model's own
    `no_weight_decay()`, names relative to `model`) get no decay. scope "all" (the authors' recipe): every
    parameter decays.
    """
    if exempt is None:
        declared = getattr(model, "no_weight_decay", None)
        exempt = set(declared()) if callable(declared) else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if scope != "all" and (p.ndim < 2 or name in exempt):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class _AppliesInitFrom(type):
    """Runs `_after_init()` once the outermost `__init__` of a module has returned (every subclass built its
    network by then), so `init_from` needs no call in each objective's `__init__`."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        module = super().__call__(*args, **kwargs)
        module._after_init()
        return module


def packed_refusal(module_class: type) -> str:
    """The one line for an objective that cannot train on packed native-resolution batches (fit and plan say it)."""
    return (f"{module_class.__name__} trains on fixed-resolution batches: use data.resolution: fixed (packed "
            "native-resolution sequences are a GenLIPModule feature)")


class EncoderModule(TrainingSafety, L.LightningModule, metaclass=_AppliesInitFrom):
    """Base LightningModule: AdamW + warmup/cosine from one set of arguments, `init_from`, the encoder contract.

    `TrainingSafety` (modules/safety.py) adds the non-finite step guard, the training RNG kept in checkpoints,
    and the weights' sha256 in checkpoints.

    Args:
        lr: peak learning rate.
        min_lr: learning rate at the end of the cosine decay.
        weight_decay: AdamW decay on matrices (never on 1-D tensors or the model's `no_weight_decay()` names).
        betas: AdamW betas.
        warmup_ratio: linear warmup over this fraction of the run's optimizer steps.
        warmup_steps: or an absolute number of warmup steps (wins over warmup_ratio).
        init_from: start from the weights of this checkpoint (a file, or a run directory: its newest
            last.ckpt), e.g. stage 2 from stage 1. Weights only: the optimizer, schedule and step start fresh,
            and this run's hyper-parameters stand (unlike `--ckpt_path`, which resumes a run).
    """

    # hyper-parameters naming weight files: a fresh copy (`fresh_copy`) starts without them
    weight_sources: tuple[str, ...] = ("init_from",)
    # trains on packed native-resolution batches (data.resolution: native, stage 2); fit and plan refuse the
    # others such data before anything loads
    trains_packed: bool = False

    def __init__(
        self,
        lr: float = 1e-3,
        min_lr: float = 1e-6,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.007,
        warmup_steps: int | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if not lr > 0:  # also NaN
            raise GenLIPUserError(f"model.lr must be > 0, got {lr}")
        if not min_lr >= 0:
            raise GenLIPUserError(f"model.min_lr must be >= 0, got {min_lr}")
        if min_lr > lr:
            raise GenLIPUserError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
        if not 0.0 <= warmup_ratio < 1.0:
            raise GenLIPUserError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        # every __init__ up the call chain: the subclass's own arguments and these (tokenizers are saved apart)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.lr, self.min_lr, self.weight_decay, self.betas = lr, min_lr, weight_decay, tuple(betas)
        self.warmup_ratio, self.warmup_steps = warmup_ratio, warmup_steps
        self.init_from = init_from
        self.init_source: str | None = None  # the checkpoint file init_from resolved to, once loaded
        # DATA_COUNTERS totals (global under DDP), int64 on the training device: added to without a host read
        self._data_totals = torch.zeros(len(DATA_COUNTERS), dtype=torch.int64)

    def _after_init(self) -> None:
        if self.init_from:
            from genlip_lit.checkpoints.loading import load_initial_weights

            self.init_source = load_initial_weights(self, self.init_from)

    # ------------------------------------------------------------------ optimisation
    def optimized_model(self) -> nn.Module:
        """The network whose parameters the optimizer updates (subclasses return their model)."""
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to `optimized_model()`) exempt from weight decay: the model's own list."""
        network = self.optimized_model()
        declared = getattr(network, "no_weight_decay", None) if network is not self else None
        return set(declared()) if callable(declared) else set()

    def fused_optimizer(self) -> bool:
        """AdamW's fused kernel: on CUDA (one launch per step, and a device-side skip for the non-finite guard:
        modules/safety.py); CPU keeps the default implementation."""
        return self.device.type == "cuda"

    def configure_optimizers(self):
        fused = self.fused_optimizer()
        groups = param_groups(self.optimized_model(), self.weight_decay, self.no_weight_decay(),
                              self.weight_decay_scope())
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, fused=fused)
        total = self.trainer.estimated_stepping_batches
        if math.isinf(total) or total <= 0:
            raise GenLIPUserError("set trainer.max_steps or trainer.max_epochs: the cosine schedule needs a length")
        total = int(total)
        warmup = self.warmup_steps if self.warmup_steps is not None else round(self.warmup_ratio * total)
        min_ratio = self.min_lr / self.lr
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup, min_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def weight_decay_scope(self) -> str:
        """`weight_decay_scope` of the module's GenLIP config (GenLIP, its captioner and contrastive baselines
        alike, so a recipe in arch_overrides applies to every objective); "matrices" without one."""
        return getattr(getattr(self, "config", None), "weight_decay_scope", "matrices")

    # ------------------------------------------------------------------ sharding
    def configure_model(self) -> None:
        """FSDP2 under Lightning's ModelParallelStrategy (experiments/scale/fsdp2.yaml); a no-op otherwise."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_fsdp2_applied", False):
            return
        network = self.optimized_model()
        if network is self or not callable(getattr(network, "shard_units", None)):
            raise GenLIPUserError(
                f"{type(self).__name__} does not support FSDP2 (ModelParallelStrategy); train it with DDP "
                "(experiments/scale/ddp.yaml)"
            )
        from genlip_lit.modules.sharding import apply_fsdp2

        apply_fsdp2(network, mesh, self.trainer.precision)
        self._fsdp2_applied = True

    # ------------------------------------------------------------------ what the data module is told
    def data_settings(self) -> dict[str, Any]:
        """The model's settings the data needs (`GenLIPDataModule.connect(**settings)`): the text format, and
        the patch size and register count that native-resolution packing lays out."""
        config = getattr(self, "config", None)
        return {
            "caption_encoder": getattr(self, "caption_encoder", None),
            "patch_size": getattr(config, "patch_size", None),
            "num_registers": int(getattr(config, "num_registers", 0) or 0),
        }

    # ------------------------------------------------------------------ self-contained checkpoints
    def save_self_description(self, checkpoint: dict) -> None:
        """Module class and tokenizer (class, init args, state such as a compact vocabulary), so that
        `genlip_lit.checkpoints.loading` rebuilds the module from the checkpoint file alone."""
        checkpoint["genlip_module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        self.save_safety_state(checkpoint)  # weights sha256, training RNG states (modules/safety.py)
        tok = getattr(self, "tokenizer", None)
        if tok is not None:
            checkpoint["genlip_tokenizer"] = {
                "class_path": f"{type(tok).__module__}.{type(tok).__qualname__}",
                "init_args": tok.init_args(),
                "state": tok.state_dict(),
            }

    def load_self_description(self, checkpoint: dict) -> None:
        self.load_safety_state(checkpoint)  # refuses corrupted or NaN weights; takes back the training RNG
        self.load_tokenizer_state(checkpoint)  # only into a tokenizer of the stored class and vocabulary size

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.save_self_description(checkpoint)  # subclasses that add entries call this too
        self.save_step_totals(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.load_self_description(checkpoint)
        self.load_step_totals(checkpoint)

    # ------------------------------------------------------------------ training-step bookkeeping
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Opens the step's RNG window (modules/safety.py), then counts the batch: every objective's one path.
        A subclass that overrides this hook calls `super().on_train_batch_start(batch, batch_idx)` first."""
        super().on_train_batch_start(batch, batch_idx)
        self.record_training_batch(batch)

    def record_training_batch(self, batch: Any) -> None:
        """Add the batch's data counts to the running totals and log them, its packing statistics, and train/lr.

        The counts are host integers the loader produced; they reach the device in one asynchronous copy and,
        under DDP, are summed over ranks in one collective (no barrier) together with the packing sums, so the
        logged totals and efficiencies are global and nothing here waits for the GPU."""
        device = self.device
        counts = [int(getattr(batch, field, 0) or 0) for field in DATA_COUNTERS.values()]
        segments = getattr(batch, "segment_ids", None)
        num_samples = len(batch) if hasattr(batch, "__len__") else 0
        step = torch.tensor(counts, dtype=torch.int64).to(device, non_blocking=True)
        if segments is not None:
            step = torch.cat([step, packing_sums(segments, num_samples)])
        if self._world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(step)  # (Lightning's strategy.reduce adds a blocking barrier)
        if self._data_totals.is_meta:  # built under a meta-device context (empty init): nothing counted yet
            self._data_totals = torch.zeros(len(DATA_COUNTERS), dtype=torch.int64, device=device)
        elif self._data_totals.device != device:
            self._data_totals = self._data_totals.to(device)
        self._data_totals += step[: len(DATA_COUNTERS)]
        logged = self._data_totals.to(torch.float32 if device.type == "mps" else torch.float64)
        size = max(num_samples, 1)
        for i, name in enumerate(DATA_COUNTERS):
            self.log(f"data/{name}", logged[i], batch_size=size)
        if segments is not None:
            useful, slots, unpacked = step[len(DATA_COUNTERS):].to(logged.dtype).unbind()
            self.log("data/packing_efficiency", useful / slots.clamp(min=1), batch_size=size)
            self.log("data/unpacked_efficiency", useful / unpacked.clamp(min=1), batch_size=size)
        optimizers = self.trainer.optimizers
        if optimizers:  # a device scalar filled from a host float: no copy to wait for
            lr = torch.full((), float(optimizers[0].param_groups[0]["lr"]), dtype=logged.dtype, device=device)
            self.log("train/lr", lr, batch_size=size)

    def step_totals_now(self) -> dict[str, int]:
        """The running data totals as integers (global under DDP): one host read, for checkpoints and reports."""
        if self._data_totals.is_meta:
            return dict.fromkeys(DATA_COUNTERS, 0)
        return dict(zip(DATA_COUNTERS, (int(v) for v in self._data_totals.tolist())))

    @property
    def skipped_samples(self) -> int:
        """Samples dropped so far because their image failed to decode (data/skipped_samples)."""
        return self.step_totals_now()["skipped_samples"]

    @property
    def truncated_captions(self) -> int:
        """Captions cut to the model's max_text_len so far (data/truncated_captions)."""
        return self.step_totals_now()["truncated_captions"]

    @property
    def unknown_tokens(self) -> int:
        """Caption tokens the tokenizer mapped to its unknown token so far (data/unknown_tokens)."""
        return self.step_totals_now()["unknown_tokens"]

    def save_step_totals(self, checkpoint: dict[str, Any]) -> None:
        for name, value in self.step_totals_now().items():
            checkpoint[f"genlip_{name}"] = value

    def load_step_totals(self, checkpoint: dict[str, Any]) -> None:
        values = [int(checkpoint.get(f"genlip_{name}", 0) or 0) for name in DATA_COUNTERS]
        device = "cpu" if self._data_totals.is_meta else self._data_totals.device
        self._data_totals = torch.tensor(values, dtype=torch.int64, device=device)

    def require_unpacked(self, batch: object) -> None:
        """Packed native-resolution batches (data.resolution: native) are for GenLIPModule only."""
        if getattr(batch, "segment_ids", None) is not None and not self.trains_packed:
            raise GenLIPUserError(packed_refusal(type(self)))

    def fresh_copy(self, seed: int = 0) -> EncoderModule:
        """The same class and hyper-parameters at a seeded random init (no weight files read), in eval mode on
        this module's device: the "random init" baseline row of the probes. The tokenizer is shared."""
        hparams = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        hparams.update({name: None for name in self.weight_sources if name in hparams})
        if getattr(self, "tokenizer", None) is not None and "tokenizer" in inspect.signature(type(self).__init__).parameters:
            hparams["tokenizer"] = self.tokenizer  # saved apart from the hyper-parameters
        with torch.random.fork_rng(devices=[]):  # seeded without moving the caller's RNG
            torch.manual_seed(seed)
            copy = type(self)(**hparams)
        return copy.eval().to(self.device)

    # ------------------------------------------------------------------ encoder contract
    def vision_tower(self) -> nn.Module:
        """The GenLIP image tower inside this module (what `genlip export` writes): the model's own answer."""
        network = self.optimized_model()
        tower = getattr(network, "vision_tower", None) if network is not self else None
        if not callable(tower):
            raise GenLIPUserError(f"{type(self).__name__} has no GenLIP vision tower to export")
        return tower()

    def encode_patches(self, pixel_values: Tensor) -> Tensor:
        """Frozen-encoder patch features [B, M, D]."""
        raise NotImplementedError

    def encode_pooled(self, pixel_values: Tensor) -> Tensor:
        """One vector per image [B, D]; default: mean of the patch features (GenLIP has no [CLS])."""
        return self.encode_patches(pixel_values).mean(dim=1)

    @property
    def objective_name(self) -> str:
        """A short label of the training objective for comparison tables (GenLIP, CLIP, SigLIP, ...)."""
        return type(self).__name__

    def num_vision_params(self) -> int:
        """Parameters of the vision encoder alone (what an MLLM would keep)."""
        raise NotImplementedError

    @property
    def is_generative(self) -> bool:
        """True when the module can caption images and score captions."""
        return False

    def generate_captions(self, pixel_values: Tensor, max_new_tokens: int | None = None, **kwargs) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not generate text")

    def score_captions(self, pixel_values: Tensor, captions: list[str]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not score text")

    def text_match_scores(self, pixel_values: Tensor, texts: list[str]) -> Tensor:
        """How well each text fits each image, [B, T] (higher = better), for zero-shot classification.

        Generative models: log-likelihood of the text as a caption prefix; contrastive: embedding similarity.
        """
        raise NotImplementedError(f"{type(self).__name__} does not match texts")

    def patch_word_scores(self, pixel_values: Tensor, words: list[str]) -> Tensor:
        """How strongly each patch says each word, [B, M, W] (higher = more): the patch-semantics readout.

        Generative models read their LM head on the patch features; contrastive ones compare projected patch
        features with the text embeddings of the words.
        """
        raise NotImplementedError(f"{type(self).__name__} has no patch readout")

    def attention_maps(self, pixel_values: Tensor, input_ids: Tensor | None = None) -> tuple[list[Tensor], int]:
        """Per-layer attention weights [B, H, N, N] over the sequence (image tokens first, then any text) and
        the number of image tokens (registers included), for the attention-sink monitor."""
        raise NotImplementedError(f"{type(self).__name__} does not expose attention maps")
