"""An encoder-decoder captioner (CapPa-style baseline) built from GenLIP's own parts.

    python -m pytest tests/modules/test_captioner.py -q

The paper's claim is that one transformer over [patches ; text] needs no separate text decoder. To test it in
the same harness, this baseline keeps GenLIP's image tower unchanged (identical encoder, bidirectional over the
patches) and adds what GenLIP does without: a small causal text decoder whose blocks are GenLIP blocks (gated
self-attention with rotary positions, SwiGLU, LayerScale) plus cross-attention to the encoder output, trained
with the same next-token loss on the same caption tokens. With `parallel` set, a step predicts every token at
once from mask tokens without the causal mask (CapPa's "parallel prediction"; CapPa uses it on 75% of batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerScale, Mlp, SwiGLU, trunc_normal_
from torch import Tensor, nn

from genlip_lit.models.attention import AttnLayout, GatedAttention
from genlip_lit.models.config import GenLIPConfig
from genlip_lit.models.generate import GenerationOutput, batched_prompt, decode_loop, target_log_likelihood
from genlip_lit.models.lm_loss import next_token_loss
from genlip_lit.models.rope import MRoPE, text_position_ids
from genlip_lit.models.transformer import NO_WEIGHT_DECAY_PARTS, GenLIP, LossOutput, image_tower


class CrossAttention(GatedAttention):
    """Text queries over the encoder's output: GenLIP's gated attention with keys and values from the image
    (no mask, no positions: the encoder already placed the patches)."""

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:  # type: ignore[override]
        b, n, _ = x.shape
        q = self._heads(self.q_proj(x))
        k, v = self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        if self.gate_proj is not None:
            out = torch.sigmoid(self.gate_proj(x)) * out
        return self.o_proj(out)


class DecoderBlock(nn.Module):
    """Pre-norm: gated causal self-attention, cross-attention to the image, FFN; each with LayerScale."""

    def __init__(self, cfg: GenLIPConfig) -> None:
        super().__init__()
        d = cfg.width

        def scale() -> nn.Module:
            return LayerScale(d, cfg.layer_scale_init) if cfg.layer_scale_init else nn.Identity()

        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.attn = GatedAttention(d, cfg.num_heads, cfg.head_dim, cfg.gated_attn, cfg.qkv_bias)
        self.ls1 = scale()
        self.norm_cross = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.cross = CrossAttention(d, cfg.num_heads, cfg.head_dim, cfg.gated_attn, cfg.qkv_bias)
        self.ls_cross = scale()
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = SwiGLU(d, cfg.ffn_hidden) if cfg.ffn_type == "swiglu" else Mlp(d, cfg.ffn_hidden, act_layer=nn.GELU)
        self.ls2 = scale()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], memory: Tensor, layout: AttnLayout) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope, layout)[0])
        x = x + self.ls_cross(self.cross(self.norm_cross(x), memory))
        return x + self.ls2(self.mlp(self.norm2(x)))


class EncoderDecoderCaptioner(nn.Module):
    """GenLIP's image tower + a `decoder_layers`-block causal text decoder with cross-attention (plain torch)."""

    def __init__(self, cfg: GenLIPConfig, decoder_layers: int = 2) -> None:
        super().__init__()
        if decoder_layers < 1:
            raise ValueError(f"decoder_layers must be >= 1, got {decoder_layers}")
        self.cfg = cfg
        d = cfg.width
        self.encoder = image_tower(cfg)
        self.tok_embed = nn.Embedding(cfg.vocab_size, d)
        self.mask_token = nn.Parameter(torch.zeros(d))  # decoder input under parallel prediction
        # 1-D rotary positions: the M-RoPE tables with t = h = w = the token index.
        self.rope = MRoPE(cfg.head_dim, cfg.mrope_section, cfg.rope_theta, cfg.mrope_layout)
        self.blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(decoder_layers)])
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        for module in (self.tok_embed, self.blocks, self.lm_head):
            module.apply(GenLIP._init_weights)
        trunc_normal_(self.mask_token, std=0.02)

    def encode_memory(self, pixel_values: Tensor) -> Tensor:
        """The encoder output the decoder reads: [B, R + M, d] (registers included), after the final norm."""
        return self.encoder.forward_features(pixel_values).hidden

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """Patch features [B, M, d] (registers dropped): the vision-encoder output, as for GenLIP."""
        return self.encode_memory(pixel_values)[:, self.cfg.num_registers :]

    def decode(self, memory: Tensor, input_ids: Tensor, parallel: bool = False) -> Tensor:
        """Decoder hidden states [B, L, d]; position j predicts token j + 1. `memory` may have batch 1."""
        b, n = input_ids.shape
        if memory.shape[0] != b:
            memory = memory.expand(b, -1, -1)
        if parallel:  # every input is the mask token; no causal mask (nothing to leak)
            x = self.mask_token.to(memory.dtype).expand(b, n, -1)
            layout = AttnLayout(num_prefix=n)
        else:
            x = self.tok_embed(input_ids)
            layout = AttnLayout(num_prefix=0)
        rope = self.rope(text_position_ids(0, n, input_ids.device))
        for blk in self.blocks:
            x = blk(x, rope, memory, layout)
        return self.norm(x)

    def text_logits(self, pixel_values: Tensor, input_ids: Tensor) -> Tensor:
        return self.lm_head(self.decode(self.encode_memory(pixel_values), input_ids))

    def loss(self, pixel_values: Tensor, input_ids: Tensor, loss_mask: Tensor, parallel: bool = False) -> LossOutput:
        """The same next-token loss as GenLIP on the same targets; only the tokens with a target hit the head."""
        hidden = self.decode(self.encode_memory(pixel_values), input_ids, parallel)
        return LossOutput(*next_token_loss(hidden, self.lm_head.weight, input_ids, loss_mask, self.cfg.loss_chunk_tokens))

    @torch.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        prompt_ids: Tensor | list[int],
        max_new_tokens: int,
        eos_id: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> GenerationOutput:
        """Greedy or sampled captions. The image is encoded once; the (small) decoder is rerun over the text
        so far at each step, which at a few decoder blocks costs less than the encoder pass."""
        memory = self.encode_memory(pixel_values)
        prompt = batched_prompt(prompt_ids, pixel_values.shape[0], pixel_values.device)

        def next_logits(step: int, step_input: Tensor, text: Tensor) -> Tensor:
            return self.lm_head(self.decode(memory, text)[:, -1])

        return decode_loop(next_logits, prompt, max_new_tokens, eos_id, temperature, top_p, generator=generator)

    @torch.no_grad()
    def score(self, pixel_values: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
        """Per-sample summed log-likelihood of the targets (loss_mask True)."""
        logits = self.text_logits(pixel_values, input_ids)[:, :-1]
        return target_log_likelihood(logits, input_ids, loss_mask)

    @torch.no_grad()
    def score_texts(self, pixel_values: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
        """[B, T] log-likelihood of each of T texts for each image; the image is encoded once."""
        memory = self.encode_memory(pixel_values)
        b, device = pixel_values.shape[0], pixel_values.device
        scores = torch.empty(b, input_ids.shape[0], device=device)
        for j in range(input_ids.shape[0]):
            ids = input_ids[j : j + 1].to(device).expand(b, -1)
            logits = self.lm_head(self.decode(memory, ids)[:, :-1])
            scores[:, j] = target_log_likelihood(logits, ids, loss_mask[j : j + 1].to(device))
        return scores

    # ---------------------------------------------------------------- training metadata
    def no_weight_decay(self) -> set[str]:
        """Names of the parameters exempt from weight decay besides the 1-D ones: GenLIP's rule, whole network."""
        return {n for n, _ in self.named_parameters() if any(part in n for part in NO_WEIGHT_DECAY_PARTS)}

    def vision_tower(self) -> GenLIP:
        """The image tower: GenLIP's own, so it exports and probes like GenLIP's."""
        return self.encoder

    def shard_units(self) -> list[nn.Module]:
        """FSDP units: the encoder's blocks, then the decoder's."""
        return [*self.encoder.shard_units(), *self.blocks]

    def num_params(self, include_text: bool = True) -> int:
        """Parameter count; without text = the vision encoder alone (identical to GenLIP's)."""
        if include_text:
            return sum(p.numel() for p in self.parameters())
        return sum(p.numel() for p in self.encoder.parameters())
