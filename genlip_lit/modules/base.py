"""What every model module shares: AdamW + warmup/cosine schedule, and the encoder contract callbacks use.

    python -m pytest tests/test_base.py -q

The encoder contract (`encode_patches`, `encode_pooled`, and for generative models `generate_captions`,
`score_captions`) is the only way callbacks and evaluation commands reach a model, so they work the same for
GenLIP and for the contrastive baselines.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn

from genlip_lit.errors import GenLIPUserError

# NO_DECAY_KEYS: parameter names (substrings) that never get weight decay, besides every 1-D tensor, in models that
# do not name their exempt parameters themselves (`no_weight_decay()`); one list, kept beside GenLIP's own rule.
from genlip_lit.models.transformer import NO_DECAY_KEYS


def param_groups(model: nn.Module, weight_decay: float, scope: str = "matrices") -> list[dict]:
    """Split parameters into decayed and non-decayed groups.

    scope "all" (the authors' recipe): every parameter decays. "matrices": norms, biases, LayerScale, embeddings,
    gates and registers do not; a model with `no_weight_decay()` names its exempt parameters itself (GenLIP).
    """
    if scope == "all":
        exempt: set[str] | None = set()
    else:
        exempt = model.no_weight_decay() if callable(getattr(model, "no_weight_decay", None)) else None
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if (name in exempt) if exempt is not None else (p.ndim < 2 or any(key in name for key in NO_DECAY_KEYS)):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to `min_ratio` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EncoderModule(L.LightningModule):
    """Base LightningModule: optimizer/schedule from hyper-parameters, plus the encoder contract."""

    def __init__(
        self,
        lr: float = 1e-3,
        min_lr: float = 1e-6,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.007,
        warmup_steps: int | None = None,
    ) -> None:
        super().__init__()
        if min_lr > lr:
            raise GenLIPUserError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
        if not 0.0 <= warmup_ratio < 1.0:
            raise GenLIPUserError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.lr, self.min_lr, self.weight_decay, self.betas = lr, min_lr, weight_decay, tuple(betas)
        self.warmup_ratio, self.warmup_steps = warmup_ratio, warmup_steps

    # ------------------------------------------------------------------ optimisation
    def optimized_model(self) -> nn.Module:
        """The network whose parameters the optimizer updates (subclasses return their model)."""
        return self

    def configure_optimizers(self):
        fused = self.device.type == "cuda"
        opt = torch.optim.AdamW(
            param_groups(self.optimized_model(), self.weight_decay, self.weight_decay_scope()), lr=self.lr,
            betas=self.betas, fused=fused
        )
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
        if network is self:
            raise GenLIPUserError(
                f"{type(self).__name__} does not support FSDP2 (ModelParallelStrategy); train it with DDP "
                "(experiments/scale/ddp.yaml)"
            )
        from genlip_lit.modules.sharding import apply_fsdp2

        apply_fsdp2(network, mesh, self.trainer.precision)
        self._fsdp2_applied = True

    # ------------------------------------------------------------------ self-contained checkpoints
    def save_self_description(self, checkpoint: dict) -> None:
        """Module class and tokenizer (class, init args, state such as a compact vocabulary), so that
        `genlip_lit.modules.loading` rebuilds the module from the checkpoint file alone."""
        checkpoint["genlip_module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        tok = getattr(self, "tokenizer", None)
        if tok is not None:
            checkpoint["genlip_tokenizer"] = {
                "class_path": f"{type(tok).__module__}.{type(tok).__qualname__}",
                "init_args": tok.init_args(),
                "state": tok.state_dict(),
            }

    def load_self_description(self, checkpoint: dict) -> None:
        if "genlip_tokenizer" in checkpoint and getattr(self, "tokenizer", None) is not None:
            self.tokenizer.load_state_dict(checkpoint["genlip_tokenizer"]["state"])

    def require_unpacked(self, batch: object) -> None:
        """Packed native-resolution batches (data.resolution: native) are for GenLIPModule only."""
        if getattr(batch, "segment_ids", None) is not None:
            raise GenLIPUserError(
                f"{type(self).__name__} trains on fixed-resolution batches: use data.resolution: fixed (packed "
                "native-resolution sequences are a GenLIPModule feature)"
            )

    # ------------------------------------------------------------------ encoder contract
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
