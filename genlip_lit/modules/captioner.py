"""`CaptionerModule`: the encoder-decoder captioner baseline (CapPa-style) under the GenLIP harness.

    genlip fit --config experiments/quickstart.yaml --config experiments/compare/captioner.yaml

Everything but the network is GenLIPModule's: the tokenizer and caption format, the next-token loss on the same
targets, the optimizer and schedule, validation, captioning and likelihood scoring for the evaluation callbacks.
The network is GenLIP's image tower plus a separate causal text decoder with cross-attention
(`models/captioner.py`), so a run answers "what does GenLIP's single-transformer design buy over a decoder?".
The patch readout reads the decoder's LM head on the encoder's patch features, as it does for GenLIP: here the
encoder never learned to speak through that head, which is exactly the property the comparison probes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from genlip_lit.data.batch import Batch
from genlip_lit.data.tokenizer import Tokenizer
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIPConfig
from genlip_lit.models.captioner import EncoderDecoderCaptioner
from genlip_lit.models.transformer import LossOutput
from genlip_lit.modules.genlip import GenLIPModule


class CaptionerModule(GenLIPModule):
    """GenLIP's image tower + a small text decoder, trained with GenLIP's captioning loss.

    Args (besides GenLIPModule's, and the training arguments of EncoderModule, init_from included):
        decoder_layers: decoder blocks (self-attention, cross-attention, FFN) at the tower's width.
        parallel_prob: fraction of training batches predicted in parallel from mask tokens without the causal
            mask (CapPa: 0.75); 0 = a plain autoregressive captioner (Cap).
    """

    trains_packed = False  # its decoder takes fixed-resolution batches (require_unpacked)

    def __init__(
        self,
        arch: str = "tiny",
        arch_overrides: dict[str, Any] | None = None,
        decoder_layers: int = 2,
        parallel_prob: float = 0.0,
        tokenizer: Tokenizer | None = None,
        prompt: str | None = None,
        max_text_len: int = 64,
        caption_max_new_tokens: int = 64,
        **kwargs: Any,
    ) -> None:
        if decoder_layers < 1:
            raise GenLIPUserError(f"model.decoder_layers must be >= 1, got {decoder_layers}")
        if not 0.0 <= parallel_prob <= 1.0:
            raise GenLIPUserError(f"model.parallel_prob must be in [0, 1], got {parallel_prob}")
        self.decoder_layers = decoder_layers  # read by build_model, which the parent's __init__ calls
        self.parallel_prob = parallel_prob
        super().__init__(
            arch=arch, arch_overrides=arch_overrides, tokenizer=tokenizer, prompt=prompt, max_text_len=max_text_len,
            caption_max_new_tokens=caption_max_new_tokens, **kwargs,
        )

    def build_model(self, config: GenLIPConfig) -> nn.Module:
        return EncoderDecoderCaptioner(config, self.decoder_layers)

    def caption_loss(self, batch: Batch) -> LossOutput:
        self.require_unpacked(batch)
        # One coin per batch (the torch RNG, so seeded runs repeat): parallel prediction or autoregressive.
        parallel = self.parallel_prob > 0 and float(torch.rand(())) < self.parallel_prob
        return self.model.loss(batch.pixel_values, batch.input_ids, batch.loss_mask, parallel=parallel)

    @property
    def objective_name(self) -> str:
        return "captioner (enc-dec)" if self.parallel_prob == 0 else f"CapPa (parallel {self.parallel_prob:g})"

    @torch.no_grad()
    def attention_maps(self, pixel_values: Tensor, input_ids: Tensor | None = None) -> tuple[list[Tensor], int]:
        """The image tower's attention (the text lives in the decoder, which attends to the image separately)."""
        out = self.model.encoder.forward_features(pixel_values, None, return_attentions=True)
        return list(out.attentions or []), out.num_prefix
