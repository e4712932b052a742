"""`ContrastiveModule`: CLIP and SigLIP baselines with GenLIP's own image tower, for side-by-side comparisons.

The image tower IS the GenLIP trunk of the same preset (patch embed, registers, blocks, final norm; M-RoPE and
gated attention as configured), run on image tokens only: the vision encoders of a GenLIP run and a CLIP/SigLIP
run then have exactly the same architecture and parameter count, and only the objective differs. Image features
are mean-pooled (GenLIP has no [CLS]; the probes use the same pooling) and projected; the text tower is
open_clip's `TextTransformer` (causal, pooled at the EOS token) over the same tokenizer as the GenLIP run; the
losses are open_clip's `ClipLoss` (softmax, learnable temperature, init 1/0.07) and `SigLipLoss` (sigmoid,
learnable temperature and bias, init log 10 and -10), which exchange features across DDP ranks themselves.

    model:
      class_path: genlip_lit.modules.ContrastiveModule
      init_args: {arch: tiny, loss: siglip, text_layers: 2}

Users with open_clip weights of their own can hold an open_clip model instead (`open_clip_model`: an
architecture name or config JSON, `open_clip_weights`: a local checkpoint file; see models/baselines.py), to
evaluate or fine-tune it under the same callbacks. The checkpoint then carries the weights: the file path is
not needed to reload it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from genlip_lit.data.batch import Batch
from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer, Tokenizer
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIPConfig
from genlip_lit.models.arch_checks import check_arch_args
from genlip_lit.models.transformer import image_tower
from genlip_lit.modules.base import EncoderModule

LOSSES = ("clip", "siglip")
def contrastive_loss(kind: str, rank: int = 0, world_size: int = 1) -> nn.Module:
    """open_clip's loss; with world_size > 1 it gathers (CLIP) or exchanges (SigLIP) features across ranks."""
    from open_clip.loss import ClipLoss, SigLipLoss

    if kind == "clip":
        return ClipLoss(gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)
    return SigLipLoss(rank=rank, world_size=world_size)


class ContrastiveModule(EncoderModule):
    """CLIP (`loss: clip`) or SigLIP (`loss: siglip`) on the GenLIP image tower of preset `arch`.

    Takes the training arguments every objective shares (`EncoderModule`: lr, ..., init_from) as keywords.
    """

    weight_sources = ("init_from", "open_clip_weights")

    def __init__(
        self,
        arch: str = "tiny",
        arch_overrides: dict | None = None,
        loss: str = "siglip",
        embed_dim: int | None = None,
        text_width: int | None = None,
        text_layers: int = 2,
        text_heads: int | None = None,
        tokenizer: Tokenizer | None = None,
        max_text_len: int = 64,
        init_logit_scale: float | None = None,
        init_logit_bias: float | None = None,
        open_clip_model: str | None = None,
        open_clip_weights: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise GenLIPUserError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        self.loss_kind = loss
        self.tokenizer = tokenizer if tokenizer is not None else OpenCLIPTokenizer()
        self.caption_encoder = CaptionEncoder(self.tokenizer, None, max_text_len)  # no prompt for a text tower
        self.clip = None
        if open_clip_model is not None:
            self._init_open_clip(open_clip_model, open_clip_weights, loss, max_text_len)
        else:
            if open_clip_weights is not None:
                raise GenLIPUserError("model.open_clip_weights needs model.open_clip_model (the architecture they fit)")
            self._init_matched_towers(arch, arch_overrides, embed_dim, text_width, text_layers, text_heads,
                                      max_text_len)
            default_scale, default_bias = (math.log(1 / 0.07), None) if loss == "clip" else (math.log(10.0), -10.0)
            scale = default_scale if init_logit_scale is None else init_logit_scale
            self.logit_scale = nn.Parameter(torch.tensor(float(scale)))
            bias = default_bias if init_logit_bias is None else init_logit_bias
            self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if loss == "siglip" else None
        self.criterion = contrastive_loss(loss)
        self.val_loss = MeanMetric()
        self.val_i2t = MeanMetric()

    def _init_matched_towers(self, arch, arch_overrides, embed_dim, text_width, text_layers, text_heads,
                             max_text_len) -> None:
        """GenLIP's image tower of preset `arch` + a projection, and a small open_clip text tower."""
        from open_clip.transformer import TextTransformer

        check_arch_args(arch, arch_overrides)  # one-line errors for bad types and ranges
        self.config = GenLIPConfig.from_name(arch, **(arch_overrides or {}))
        self.visual = image_tower(self.config)
        width = self.config.width
        embed_dim = embed_dim or width
        text_width = text_width or width
        self.image_proj = nn.Linear(width, embed_dim, bias=False)
        self.text = TextTransformer(
            context_length=max_text_len,
            vocab_size=self.tokenizer.vocab_size,
            width=text_width,
            heads=text_heads or max(1, text_width // 64),
            layers=text_layers,
            output_dim=embed_dim,
            pad_id=self.tokenizer.pad_id,
            eos_id=self.tokenizer.eos_id,
            pool_type="eos",  # the first EOS: right after the caption (padding may also be EOS)
        )

    def _init_open_clip(self, model: str, weights: str | None, loss: str, max_text_len: int) -> None:
        """Both towers from an open_clip model (local weights optional); its tokenizer format must match ours."""
        from genlip_lit.models.baselines import load_open_clip

        self.clip = load_open_clip(model, weights)
        self.config = None  # not a GenLIP tower
        if self.tokenizer.vocab_size != self.clip.vocab_size:
            raise GenLIPUserError(
                f"open_clip model {model!r} has a {self.clip.vocab_size}-token vocabulary but the tokenizer has "
                f"{self.tokenizer.vocab_size} (use OpenCLIPTokenizer with compact_corpus: null for the CLIP BPE)"
            )
        if max_text_len != self.clip.context_length:
            raise GenLIPUserError(
                f"model.max_text_len must equal the open_clip model's context length {self.clip.context_length}, "
                f"got {max_text_len}"
            )
        self.logit_scale = self.clip.logit_scale  # pretrained temperature (and bias) are kept
        bias = getattr(self.clip, "logit_bias", None)
        self.logit_bias = bias if bias is not None or loss == "clip" else nn.Parameter(torch.tensor(-10.0))

    def setup(self, stage: str) -> None:
        # the loss needs this process's rank to exchange features with the others under DDP
        if self.trainer is not None and self.trainer.world_size > 1:
            self.criterion = contrastive_loss(self.loss_kind, self.trainer.global_rank, self.trainer.world_size)

    # ------------------------------------------------------------------ embeddings
    def embed_images(self, pixel_values: Tensor) -> Tensor:
        """L2-normalized image embeddings [B, E]: mean-pooled patch features, projected (open_clip: its own
        pooling and projection)."""
        if self.clip is not None:
            return F.normalize(self.clip.visual(pixel_values)[0], dim=-1)
        return F.normalize(self.image_proj(self.encode_patches(pixel_values).mean(dim=1)), dim=-1)

    def embed_texts(self, input_ids: Tensor) -> Tensor:
        """L2-normalized text embeddings [B, E] of token ids (BOS ... EOS, right-padded)."""
        ids = self._pad_to_context(input_ids)
        return F.normalize(self.clip.encode_text(ids) if self.clip is not None else self.text(ids), dim=-1)

    def project_patches(self, patches: Tensor) -> Tensor:
        """Patch features in the joint embedding space, [B, M, E]."""
        if self.clip is None:
            return self.image_proj(patches)
        proj = getattr(self.clip.visual, "proj", None)
        return patches @ proj if proj is not None else patches

    def _encode_texts(self, texts: list[str]) -> Tensor:
        ids, _, _ = self.caption_encoder.collate_text([self.caption_encoder.encode(t) for t in texts])
        return self.embed_texts(ids.to(self.device))

    def compute_loss(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        scale = self.logit_scale.exp()
        if self.loss_kind == "clip":
            return self.criterion(image_emb, text_emb, scale)
        return self.criterion(image_emb, text_emb, scale, self.logit_bias)

    def _pad_to_context(self, input_ids: Tensor) -> Tensor:
        """open_clip's text tower has a fixed context length (its causal mask is built for it): pad to it."""
        n = self.hparams.max_text_len
        if input_ids.shape[1] < n:
            input_ids = F.pad(input_ids, (0, n - input_ids.shape[1]), value=self.tokenizer.pad_id)
        return input_ids

    # ------------------------------------------------------------------ training
    # (data counters and train/lr: EncoderModule.record_training_batch, for every objective)
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        self.require_unpacked(batch)
        if len(batch) == 0:
            return None
        batch = batch.normalized()
        loss = self.compute_loss(self.embed_images(batch.pixel_values), self.embed_texts(batch.input_ids))
        n = len(batch)
        # the mean over ranks: SigLIP's per-rank losses are parts of the global one (CLIP's are all equal)
        self.log("train/loss", loss, prog_bar=True, batch_size=n, sync_dist=self._world_size() > 1)
        self.log("train/logit_scale", self.logit_scale.exp().detach(), batch_size=n)
        return self.skip_if_nonfinite(loss)  # None / zero gradients (no update) when NaN/inf: modules/safety.py

    def _eval_step(self, batch: Batch) -> None:
        if len(batch) == 0:
            return
        batch = batch.normalized()
        img, txt = self.embed_images(batch.pixel_values), self.embed_texts(batch.input_ids)
        self.val_loss.update(self.compute_loss(img, txt), weight=len(batch))
        # in-batch retrieval: does each image pick its own caption?
        hits = ((img @ txt.T).argmax(dim=1) == torch.arange(len(batch), device=img.device)).float().mean()
        self.val_i2t.update(hits, weight=len(batch))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.log("val/i2t_top1_in_batch", self.val_i2t.compute())
        self.val_loss.reset()
        self.val_i2t.reset()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # self-description and the step totals (modules/base.py)
        # The state dict holds the (possibly fine-tuned) open_clip weights: rebuilding from this checkpoint must
        # not read, or require, the original weights file.
        if "hyper_parameters" in checkpoint and checkpoint["hyper_parameters"].get("open_clip_weights"):
            checkpoint["hyper_parameters"]["open_clip_weights"] = None

    # ------------------------------------------------------------------ model metadata
    def no_weight_decay(self) -> set[str]:
        """The GenLIP image tower's own list (the open_clip text tower and projections decay, as ever)."""
        if self.clip is not None:
            return set()
        return {f"visual.{name}" for name in self.visual.no_weight_decay()}

    def vision_tower(self) -> nn.Module:
        if self.clip is not None:
            raise GenLIPUserError("this checkpoint holds an open_clip model: export it with open_clip's own tools")
        return self.visual

    def data_settings(self) -> dict[str, Any]:
        settings = super().data_settings()
        if self.clip is not None:  # an open_clip tower: its own patch grid, no registers
            patch = getattr(self.clip.visual, "patch_size", None)
            settings["patch_size"] = patch[0] if isinstance(patch, tuple) else patch
        return settings

    # ------------------------------------------------------------------ encoder contract
    @property
    def objective_name(self) -> str:
        return {"clip": "CLIP", "siglip": "SigLIP"}[self.loss_kind]

    def num_vision_params(self) -> int:
        visual = self.clip.visual if self.clip is not None else self.visual
        return sum(p.numel() for p in visual.parameters())

    def encode_patches(self, pixel_values: Tensor) -> Tensor:
        if self.clip is not None:
            return self.clip.visual(pixel_values)[1]
        out = self.visual.forward_features(pixel_values)
        return out.hidden[:, self.config.num_registers :]

    @torch.no_grad()
    def text_match_scores(self, pixel_values: Tensor, texts: list[str]) -> Tensor:
        """Cosine similarity of image and text embeddings, [B, T]."""
        return self.embed_images(pixel_values) @ self._encode_texts(texts).T

    @torch.no_grad()
    def patch_word_scores(self, pixel_values: Tensor, words: list[str]) -> Tensor:
        """Cosine similarity of each projected patch feature with each word's text embedding, [B, M, W]."""
        patches = F.normalize(self.project_patches(self.encode_patches(pixel_values)), dim=-1)
        return patches @ self._encode_texts(words).T

    @torch.no_grad()
    def attention_maps(self, pixel_values: Tensor, input_ids: Tensor | None = None) -> tuple[list[Tensor], int]:
        if self.clip is not None:
            raise NotImplementedError("attention maps of open_clip towers are not exposed")
        out = self.visual.forward_features(pixel_values, None, return_attentions=True)  # the image tower only
        return list(out.attentions or []), out.num_prefix
