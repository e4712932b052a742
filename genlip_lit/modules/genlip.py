"""GenLIPModule: the GenLIP transformer trained with next-token loss on captions.

    genlip fit --config experiments/quickstart.yaml

The module owns the text format (tokenizer, prompt, maximum length): the vocabulary sizes the LM head, and the
same format must be used to train, to caption and to score. The data module is given it through
`GenLIPDataModule.connect(**module.data_settings())`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from genlip_lit.data.batch import Batch
from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer, Tokenizer
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIP, GenLIPConfig
from genlip_lit.models.arch_checks import check_arch_args
from genlip_lit.models.transformer import LossOutput
from genlip_lit.modules.base import EncoderModule


class GenLIPModule(EncoderModule):
    """Trains a GenLIP transformer; exposes it as a vision encoder and captioner through the encoder contract.

    Args:
        arch: preset name of `GenLIPConfig` (tiny, s16, b16, l16, so16, g16, l16_paper, g16_paper).
        arch_overrides: fields of `GenLIPConfig` to change, e.g. {"depth": 6, "gated_attn": false}. The
            vocabulary follows the tokenizer; a `vocab_size` here may only make it larger (a padded LM head,
            as the released models' 151,936 rows for Qwen3's 151,669 tokens).
        tokenizer: text tokenizer plug-in; default open_clip's bundled BPE (49,408 tokens).
        prompt: loss-free instruction between the image and the caption (the paper uses
            "Describe the image in detail."); None for none.
        max_text_len: BOS + prompt + caption + EOS are truncated to this many tokens.
        text_template: "genlip" ([BOS] prompt caption [EOS]) or "official" (the released models' prompt caption
            <|im_end|> newline, no BOS; see data/tokenizer.py TEXT_TEMPLATES).
        caption_max_new_tokens: default generation budget for `generate_captions`.
        **kwargs: the training arguments every objective shares (`EncoderModule`: lr, min_lr, weight_decay,
            betas, warmup_ratio, warmup_steps, init_from).
    """

    trains_packed = True  # stage 2: packed native-resolution rows

    def __init__(
        self,
        arch: str = "tiny",
        arch_overrides: dict[str, Any] | None = None,
        tokenizer: Tokenizer | None = None,
        prompt: str | None = None,
        max_text_len: int = 64,
        caption_max_new_tokens: int = 64,
        text_template: str = "genlip",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer if tokenizer is not None else OpenCLIPTokenizer()
        self.caption_encoder = CaptionEncoder(self.tokenizer, prompt, max_text_len, text_template)
        check_arch_args(arch, arch_overrides)  # one-line errors for bad types and ranges
        overrides = dict(arch_overrides or {})
        vocab = int(overrides.pop("vocab_size", self.tokenizer.vocab_size))
        if vocab < self.tokenizer.vocab_size:
            raise GenLIPUserError(f"arch_overrides.vocab_size {vocab} is smaller than the tokenizer's vocabulary "
                                  f"({self.tokenizer.vocab_size} tokens)")
        self.config = GenLIPConfig.from_name(arch, **overrides, vocab_size=vocab)
        self.model = self.build_model(self.config)
        self.caption_max_new_tokens = caption_max_new_tokens
        self.val_loss = MeanMetric()
        self.val_correct = SumMetric()
        self.val_tokens = SumMetric()

    def build_model(self, config: GenLIPConfig) -> nn.Module:
        """The network trained on captions (subclasses swap in another, e.g. the encoder-decoder baseline)."""
        return GenLIP(config)

    def optimized_model(self) -> nn.Module:
        return self.model

    def caption_loss(self, batch: Batch) -> LossOutput:
        """Next-token loss of a (normalized) batch, fixed-resolution or packed."""
        if batch.is_packed:
            return self.model.loss_packed(
                batch.pixel_values, batch.token_kinds, batch.input_ids, batch.position_ids, batch.segment_ids,
                batch.loss_mask,
            )
        return self.model.loss(batch.pixel_values, batch.input_ids, batch.loss_mask)

    # ------------------------------------------------------------------ training
    # (data counters, packing statistics and train/lr: EncoderModule.record_training_batch, for every objective)
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        batch = batch.normalized()  # a no-op after GenLIPDataModule.on_after_batch_transfer
        if self._world_size() > 1:
            return self._distributed_training_step(batch)
        if len(batch) == 0:  # every image of this batch failed to decode: nothing to learn from
            return None
        out = self.caption_loss(batch)
        n = len(batch)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=n)
        self.log("train/token_acc", out.num_correct / out.num_tokens.clamp(min=1), batch_size=n)
        self.log("train/ppl", torch.exp(out.loss.detach().clamp(max=20)), batch_size=n)
        return self.skip_if_nonfinite(out.loss)  # None (no update) when NaN/inf: modules/safety.py

    def _distributed_training_step(self, batch: Batch) -> Tensor:
        """One rank's step under DDP/FSDP, the same objective as one process at the same global batch.

        Each rank's mean loss is rescaled by (its target tokens x world size / all ranks' target tokens): DDP
        averages gradients over ranks, so the result is the gradient of the mean over every target token of the
        global batch, whatever the ranks' token counts. Logged loss and accuracy are global sums
        (one all-reduce); a rank whose batch is empty backpropagates zeros, and a NaN/inf on any rank skips the
        step on all of them.
        """
        n = len(batch)
        out = self.caption_loss(batch) if n else None
        tokens = out.num_tokens.double() if out is not None else 0.0
        loss_sum = out.loss.detach().double() * tokens if out is not None else 0.0
        correct = out.num_correct if out is not None else 0
        bad = (~torch.isfinite(out.loss.detach())).double() if out is not None else 0.0
        totals = self.step_totals([tokens, loss_sum, correct, bad, n])
        g_tokens, g_loss_sum, g_correct, g_bad, g_samples = totals.tolist()
        if g_samples == 0 or g_tokens == 0:  # every rank's batch failed to decode: nothing to learn from
            return self.zero_gradient_loss()
        loss = self.zero_gradient_loss() if out is None else out.loss * (float(tokens) * self._world_size() / g_tokens)
        mean = torch.tensor(g_loss_sum / g_tokens, device=self.device)
        self.log("train/loss", mean, prog_bar=True, batch_size=max(n, 1))
        self.log("train/token_acc", g_correct / g_tokens, batch_size=max(n, 1))
        self.log("train/ppl", torch.exp(mean.clamp(max=20)), batch_size=max(n, 1))
        return self.skip_if_nonfinite(loss, nonfinite=g_bad > 0)

    # ------------------------------------------------------------------ validation / test
    def _eval_step(self, batch: Batch) -> Tensor | None:
        if len(batch) == 0:
            return None
        batch = batch.normalized()
        # packed batches through caption_loss; fixed ones always autoregressive (the captioner's training
        # loss may flip a coin for parallel prediction)
        out = self.caption_loss(batch) if batch.is_packed else self.model.loss(
            batch.pixel_values, batch.input_ids, batch.loss_mask
        )
        self.val_loss.update(out.loss, weight=out.num_tokens)
        self.val_correct.update(out.num_correct)
        self.val_tokens.update(out.num_tokens)
        return out.loss

    def _eval_epoch_end(self, stage: str) -> None:
        loss = self.val_loss.compute()
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/token_acc", self.val_correct.compute() / self.val_tokens.compute().clamp(min=1))
        self.log(f"{stage}/ppl", torch.exp(loss.clamp(max=20)))
        for metric in (self.val_loss, self.val_correct, self.val_tokens):
            metric.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, str]]:
        captions = self.generate_captions(batch.normalized().pixel_values)
        return [{"caption": c, "reference": r} for c, r in zip(captions, batch.captions or [""] * len(captions))]

    # ------------------------------------------------------------------ encoder contract
    @property
    def is_generative(self) -> bool:
        return True

    @property
    def objective_name(self) -> str:
        return "GenLIP"

    def num_vision_params(self) -> int:
        return self.model.num_params(include_text=False)

    def encode_patches(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_image(pixel_values)

    @torch.no_grad()
    def generate_captions(
        self,
        pixel_values: Tensor,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """Greedy (temperature 0) or sampled captions (from `generator`'s stream when given), decoded to text."""
        out = self.model.generate(
            pixel_values,
            self.caption_encoder.prompt_ids(),
            max_new_tokens or self.caption_max_new_tokens,
            eos_id=self.caption_encoder.stop_id,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
        )
        # the stop token ends each sequence (and pads it): drop it; decode() drops the other special tokens
        stop = self.caption_encoder.stop_id
        return [self.tokenizer.decode([i for i in t[:n].tolist() if i != stop])
                for t, n in zip(out.tokens, out.lengths.tolist())]

    @torch.no_grad()
    def text_match_scores(self, pixel_values: Tensor, texts: list[str]) -> Tensor:
        """Summed log-likelihood of each text as the start of a caption (no EOS: templates are fragments)."""
        # the end tokens (EOS) are left out: templates are a caption's start
        encoded = [self.caption_encoder.encode(text, with_end=False) for text in texts]
        ids, loss_mask, _ = self.caption_encoder.collate_text(encoded)
        return self.model.score_texts(pixel_values, ids, loss_mask)

    def word_token_ids(self, words: list[str]) -> list[int]:
        """The first token of each word (its readout id); words are encoded as they appear inside a caption."""
        ids = []
        for word in words:
            pieces = self.tokenizer.encode(word)
            if not pieces:
                raise GenLIPUserError(f"the word {word!r} encodes to no token with this tokenizer")
            ids.append(pieces[0])
        return ids

    @torch.no_grad()
    def patch_word_scores(self, pixel_values: Tensor, words: list[str]) -> Tensor:
        """LM-head logits of each word's first token at each patch feature, [B, M, W]."""
        patches = self.model.encode_image(pixel_values)
        head_input = getattr(self.model, "head_input", None)  # GenLIP's text bottleneck; the captioner has none
        patches = head_input(patches) if head_input is not None else patches
        weight = self.model.lm_head.weight[torch.tensor(self.word_token_ids(words), device=patches.device)]
        return patches @ weight.T

    @torch.no_grad()
    def attention_maps(self, pixel_values: Tensor, input_ids: Tensor | None = None) -> tuple[list[Tensor], int]:
        out = self.model.forward_features(pixel_values, input_ids, return_attentions=True)
        return list(out.attentions or []), out.num_prefix

    @torch.no_grad()
    def score_captions(self, pixel_values: Tensor, captions: list[str]) -> Tensor:
        """Summed log-likelihood of each caption given its image (higher = better match)."""
        encoded = [self.caption_encoder.encode(c) for c in captions]
        ids, loss_mask, _ = self.caption_encoder.collate_text(encoded)
        return self.model.score(pixel_values, ids.to(self.device), loss_mask.to(self.device))

