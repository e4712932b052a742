"""GenLIP: one transformer over [registers ; image patches ; text tokens] with a next-token loss on text.

    python -c "from genlip_lit.models import GenLIP, GenLIPConfig; print(GenLIP(GenLIPConfig.from_name('tiny')))"

Image tokens attend bidirectionally among themselves; text tokens attend to all image tokens and causally to
earlier text (prefix-LM). Without text the network is a plain ViT encoder: `encode_image` returns the final-norm
patch features an MLLM consumes. No [CLS] token and no absolute position embedding unless the ablation asks.
With a text bottleneck (`text_width` != width, the released L/16 and g/16) token embeddings and the LM head are
text_width wide, `text_in_proj` widens the embeddings for the blocks and `text_out_proj` narrows the final-norm
output for the LM head (`logits`); both belong to the text side, not to the image tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import DropPath, LayerScale, Mlp, SwiGLU, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from genlip_lit.data.batch import PATCH, REGISTER, TEXT
from genlip_lit.models.attention import AttnLayout, GatedAttention, KVCache, PackedLayout
from genlip_lit.models.config import GenLIPConfig
from genlip_lit.models.lm_loss import next_token_loss
from genlip_lit.models.rope import MRoPE, genlip_position_ids, text_position_ids, text_start

# what an image-only tower of GenLIP does not have
TEXT_ONLY_PARTS = ("tok_embed", "text_in_proj", "text_out_proj", "lm_head", "pos_text")
# Parameters (name substrings) that get no weight decay under weight_decay_scope "matrices", besides every 1-D
# tensor (norms, biases, LayerScale): embeddings, positions, registers and the attention gates.
NO_WEIGHT_DECAY_PARTS = ("tok_embed", "pos_image", "pos_text", "registers", "gate_proj", "patch_embed.bias")


class Block(nn.Module):
    """Pre-norm block: gated attention and an FFN, each with LayerScale and drop path."""

    def __init__(self, cfg: GenLIPConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = GatedAttention(cfg.width, cfg.num_heads, cfg.head_dim, cfg.gated_attn, cfg.qkv_bias, cfg.out_bias)
        self.ls1 = LayerScale(cfg.width, cfg.layer_scale_init) if cfg.layer_scale_init else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        if cfg.ffn_type == "swiglu":
            self.mlp = SwiGLU(cfg.width, cfg.ffn_hidden, bias=cfg.ffn_bias)
        else:
            self.mlp = Mlp(cfg.width, cfg.ffn_hidden, act_layer=nn.GELU, bias=cfg.ffn_bias)
        self.ls2 = LayerScale(cfg.width, cfg.layer_scale_init) if cfg.layer_scale_init else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        layout: AttnLayout | PackedLayout,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        attn_out, weights = self.attn(self.norm1(x), rope, layout, cache, layer_idx, return_weights)
        x = x + self.drop_path1(self.ls1(attn_out))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, weights


@dataclass
class LossOutput:
    loss: Tensor  # mean next-token cross-entropy over target tokens
    num_tokens: Tensor  # number of target tokens
    num_correct: Tensor  # argmax predictions equal to the target


@dataclass
class FeaturesOutput:
    hidden: Tensor  # [B, N, width] after the final norm, N = R + M + L
    num_prefix: int  # R + M: registers and patches
    grid: tuple[int, int] | None
    attentions: list[Tensor] | None = None  # per layer [B, H, N, N] when requested


class GenLIP(nn.Module):
    """The GenLIP transformer (plain torch)."""

    def __init__(self, cfg: GenLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.patch_embed = nn.Conv2d(cfg.in_chans, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.text_width)
        # text bottleneck (released L/16, g/16): text_width -> width before the blocks, back after the final norm
        self.text_in_proj = nn.Linear(cfg.text_width, d) if cfg.has_text_bottleneck else None
        self.text_out_proj = nn.Linear(d, cfg.text_width) if cfg.has_text_bottleneck else None
        self.registers = nn.Parameter(torch.zeros(cfg.num_registers, d)) if cfg.num_registers else None
        if cfg.pos_embed == "mrope":
            self.rope = MRoPE(cfg.head_dim, cfg.mrope_section, cfg.rope_theta, cfg.mrope_layout)
        else:
            self.rope = None
            self.pos_image = nn.Parameter(torch.zeros(cfg.max_grid, cfg.max_grid, d))
            self.pos_text = nn.Parameter(torch.zeros(cfg.max_text_len, d))
        self.blocks = nn.ModuleList([Block(cfg, r) for r in cfg.drop_path_rates()])
        if cfg.compile_blocks:
            for blk in self.blocks:
                blk.compile()  # per block: one compiled graph reused by every layer, and checkpointing still works
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.text_width, cfg.vocab_size, bias=False)  # untied from tok_embed (paper)
        self.apply(self._init_weights)
        for p in (self.registers, getattr(self, "pos_image", None), getattr(self, "pos_text", None)):
            if p is not None:
                trunc_normal_(p, std=0.02)
        if cfg.attn_init == "xavier":
            for blk in self.blocks:
                xavier_init_attention(blk.attn)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            trunc_normal_(m.weight, std=0.02)

    def set_attn_impl(self, impl: str) -> None:
        """Switch every block's kernel: "auto" (default), "sdpa" (fused split), "mask" or "manual"."""
        for blk in self.blocks:
            blk.attn.impl = impl

    # ---------------------------------------------------------------- embeddings
    def embed_image(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """[B, 3, H, W] -> patch tokens [B, M, d] in raster order, and the grid (gh, gw)."""
        x = self.patch_embed(pixel_values)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.rope is None:
            gh, gw = grid
            if max(gh, gw) > self.cfg.max_grid:
                raise ValueError(f"patch grid {grid} exceeds max_grid {self.cfg.max_grid} of learned positions")
            x = x + self.pos_image[:gh, :gw].reshape(gh * gw, -1)
        return x, grid

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """Token embeddings at the blocks' width (through the text bottleneck when there is one)."""
        x = self.tok_embed(input_ids)
        return x if self.text_in_proj is None else self.text_in_proj(x)

    def embed_text(self, input_ids: Tensor, offset: int = 0) -> Tensor:
        x = self.embed_tokens(input_ids)
        if self.rope is None:
            end = offset + input_ids.shape[1]
            if end > self.cfg.max_text_len:
                raise ValueError(f"text of {end} tokens exceeds max_text_len {self.cfg.max_text_len}")
            x = x + self.pos_text[offset:end]
        return x

    # ---------------------------------------------------------------- trunk
    def forward_features(
        self,
        pixel_values: Tensor | None,
        input_ids: Tensor | None = None,
        cache: KVCache | None = None,
        return_attentions: bool = False,
    ) -> FeaturesOutput:
        """Run the trunk. Without a cache (or an empty one) pixels are required; a filled cache continues text."""
        cfg = self.cfg
        continuing = cache is not None and cache.length > 0
        parts, grid = [], None
        if continuing:
            if pixel_values is not None:
                raise ValueError("pixel_values must be None when continuing from a filled KV cache")
            num_prefix, start = cache.num_prefix, cache.text_start
            text_offset = cache.length - num_prefix
        else:
            if pixel_values is None:
                raise ValueError("pixel_values are required for the first forward pass")
            img, grid = self.embed_image(pixel_values)
            if self.registers is not None:
                parts.append(self.registers.expand(img.shape[0], -1, -1))
            parts.append(img)
            num_prefix, start, text_offset = cfg.num_registers + img.shape[1], text_start(*grid), 0
            if cache is not None:
                cache.num_prefix, cache.text_start = num_prefix, start
        n_text = 0 if input_ids is None else input_ids.shape[1]
        if n_text:
            parts.append(self.embed_text(input_ids, text_offset))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

        rope = None
        if self.rope is not None:
            if continuing:
                pos = text_position_ids(start + text_offset, n_text, x.device)
            else:
                pos = genlip_position_ids(*grid, n_text, cfg.num_registers, x.device)
            rope = self.rope(pos)
        q_start = cache.length if cache is not None else 0
        layout = AttnLayout(num_prefix if cfg.attn_mode == "prefix" else 0, q_start)

        x, attentions = self._run_blocks(x, rope, layout, cache, return_attentions)
        if cache is not None:
            cache.length += x.shape[1]
        return FeaturesOutput(self.norm(x), num_prefix, grid, attentions)

    def _run_blocks(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, layout: AttnLayout | PackedLayout,
        cache: KVCache | None, return_attentions: bool,
    ) -> tuple[Tensor, list[Tensor] | None]:
        attentions = [] if return_attentions else None
        # Activation checkpointing: keep only each block's input, recompute the block in backward.
        recompute = self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, blk in enumerate(self.blocks):
            if recompute and not return_attentions:
                x, w = checkpoint(blk, x, rope, layout, None, i, False, use_reentrant=False)
            else:
                x, w = blk(x, rope, layout, cache, i, return_attentions)
            if attentions is not None:
                attentions.append(w)
        return x, attentions

    # ---------------------------------------------------------------- packed sequences (stage 2)
    def forward_packed(
        self,
        patches: Tensor,
        token_kinds: Tensor,
        input_ids: Tensor,
        position_ids: Tensor,
        segment_ids: Tensor,
        return_attentions: bool = False,
    ) -> FeaturesOutput:
        """Trunk over packed rows of several samples (data/packing.py), each with its own grid and prefix-LM.

        patches [P, 3, p, p] (normalized, placement order), token_kinds / input_ids / segment_ids [R, T],
        position_ids [3, R, T]. Returns the final-norm hidden states [R, T, width] (num_prefix 0, grid None).
        The patch embedding runs as the convolution's own weights on flattened patches, so every sample gets
        exactly the features of running it alone.
        """
        if self.rope is None:
            raise ValueError("packed sequences need M-RoPE positions (pos_embed: mrope), not learned positions")
        cfg = self.cfg
        conv = self.patch_embed
        patch_tokens = torch.nn.functional.linear(patches.flatten(1), conv.weight.flatten(1), conv.bias)
        is_patch, is_text = token_kinds == PATCH, token_kinds == TEXT
        if int(is_patch.sum()) != patch_tokens.shape[0]:
            raise ValueError(f"{patch_tokens.shape[0]} patches for {int(is_patch.sum())} PATCH slots")
        text_tokens = self.embed_tokens(input_ids[is_text])
        # under autocast the patch projection comes out in bf16 and the embedding in fp32: one common dtype, as
        # torch.cat promotes them on the unpacked path
        dtype = torch.promote_types(patch_tokens.dtype, text_tokens.dtype)
        rows, n = token_kinds.shape
        x = patch_tokens.new_zeros(rows, n, cfg.width, dtype=dtype)
        x = x.masked_scatter(is_patch[..., None], patch_tokens.to(dtype))
        x = x.masked_scatter(is_text[..., None], text_tokens.to(dtype))
        if self.registers is not None:
            is_register = token_kinds == REGISTER
            num_samples = int(is_register.sum()) // cfg.num_registers
            x = x.masked_scatter(is_register[..., None], self.registers.repeat(num_samples, 1).to(dtype))
        prefix = (token_kinds == PATCH) | (token_kinds == REGISTER)
        if cfg.attn_mode != "prefix":
            prefix = torch.zeros_like(prefix)
        layout = PackedLayout(segment_ids, prefix)
        x, attentions = self._run_blocks(x, self.rope(position_ids), layout, None, return_attentions)
        return FeaturesOutput(self.norm(x), 0, None, attentions)

    def loss_packed(
        self,
        patches: Tensor,
        token_kinds: Tensor,
        input_ids: Tensor,
        position_ids: Tensor,
        segment_ids: Tensor,
        loss_mask: Tensor,
    ) -> LossOutput:
        """Next-token cross-entropy over the targets of every packed sample (one mean over all of them).

        A target is never a sample's first token (BOS is not a target), so the position before it is always
        in the same sample.
        """
        out = self.forward_packed(patches, token_kinds, input_ids, position_ids, segment_ids)
        return self._next_token_loss(out.hidden, input_ids, loss_mask)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """Patch features [B, M, d] (final norm output, registers dropped): the vision-encoder output."""
        out = self.forward_features(pixel_values)
        return out.hidden[:, self.cfg.num_registers :]

    def head_input(self, hidden: Tensor) -> Tensor:
        """Final-norm hidden states [..., width] -> what the LM head reads [..., text_width]."""
        return hidden if self.text_out_proj is None else self.text_out_proj(hidden)

    def logits(self, hidden: Tensor) -> Tensor:
        """LM-head logits [..., V] of final-norm hidden states (text positions, or patches for the readout)."""
        return self.lm_head(self.head_input(hidden))

    def text_logits(self, pixel_values: Tensor, input_ids: Tensor) -> Tensor:
        """Logits [B, L, V] at every text position (position j predicts token j + 1)."""
        out = self.forward_features(pixel_values, input_ids)
        return self.logits(out.hidden[:, out.num_prefix :])

    def forward(self, pixel_values: Tensor, input_ids: Tensor) -> Tensor:
        return self.text_logits(pixel_values, input_ids)

    # ---------------------------------------------------------------- loss
    def loss(self, pixel_values: Tensor, input_ids: Tensor, loss_mask: Tensor) -> LossOutput:
        """Next-token cross-entropy on the tokens where loss_mask is True (caption + EOS).

        Only the text positions that predict a target go through the LM head, so image tokens, prompt
        tokens and padding cost no vocabulary-sized logits; with `loss_chunk_tokens` not even those are
        materialised at once (models/lm_loss.py).
        """
        out = self.forward_features(pixel_values, input_ids)
        return self._next_token_loss(out.hidden[:, out.num_prefix :], input_ids, loss_mask)

    def _next_token_loss(self, text_hidden: Tensor, input_ids: Tensor, loss_mask: Tensor) -> LossOutput:
        return LossOutput(*next_token_loss(text_hidden, self.lm_head.weight, input_ids, loss_mask,
                                           self.cfg.loss_chunk_tokens, project=self.text_out_proj))

    # ---------------------------------------------------------------- generation and scoring
    # The functions live in generate.py (imported here lazily, never the other way); these methods give GenLIP
    # the same interface as the encoder-decoder baseline, so a LightningModule can hold either.
    def generate(self, pixel_values: Tensor, prompt_ids: Tensor | list[int], max_new_tokens: int, eos_id: int,
                 **kwargs):
        """KV-cache generation (see `generate.generate`)."""
        from genlip_lit.models.generate import generate

        return generate(self, pixel_values, prompt_ids, max_new_tokens, eos_id, **kwargs)

    def score(self, pixel_values: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
        """Per-sample summed log-likelihood of the targets (see `generate.score`)."""
        from genlip_lit.models.generate import score

        return score(self, pixel_values, input_ids, loss_mask)[0]

    def score_texts(self, pixel_values: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
        """[B, T] log-likelihood of T texts per image over one cached image prefix (see `generate.score_texts`)."""
        from genlip_lit.models.generate import score_texts

        return score_texts(self, pixel_values, input_ids, loss_mask)

    # ---------------------------------------------------------------- training metadata
    def no_weight_decay(self) -> set[str]:
        """Names of the parameters exempt from weight decay besides the 1-D ones (timm's convention)."""
        return {n for n, _ in self.named_parameters() if any(part in n for part in NO_WEIGHT_DECAY_PARTS)}

    def vision_tower(self) -> GenLIP:
        """The module whose image-only parameters make the vision encoder (export keeps those)."""
        return self

    def shard_units(self) -> list[nn.Module]:
        """The submodules FSDP shards one by one (each block), before the whole network."""
        return list(self.blocks)

    def num_params(self, include_text: bool = True, include_gate: bool = True) -> int:
        """Parameter count; without text = the vision encoder (no token embedding, no LM head)."""
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if (include_text or not name.startswith(TEXT_ONLY_PARTS)) and (include_gate or ".gate_proj." not in name)
        )


def xavier_init_attention(attn: GatedAttention) -> None:
    """The authors' init of q/gate/k/v/o: xavier-uniform (q and gate as one fused [2d, d] matrix), zero biases."""
    with torch.no_grad():
        if attn.gate_proj is not None:
            fused = torch.empty(2 * attn.q_proj.out_features, attn.q_proj.in_features)
            nn.init.xavier_uniform_(fused)
            q, gate = fused.chunk(2)
            attn.q_proj.weight.copy_(q)
            attn.gate_proj.weight.copy_(gate)
        else:
            nn.init.xavier_uniform_(attn.q_proj.weight)
        for linear in (attn.k_proj, attn.v_proj, attn.o_proj):
            nn.init.xavier_uniform_(linear.weight)
        for linear in (attn.q_proj, attn.gate_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            if linear is not None and linear.bias is not None:
                linear.bias.zero_()


def image_tower(cfg: GenLIPConfig) -> GenLIP:
    """The GenLIP trunk without its text parts (token embedding, LM head, text positions).

    The baselines (CLIP / SigLIP, the encoder-decoder captioner) use it as their vision encoder, so their
    encoders have exactly GenLIP's architecture and parameter count and only the objective differs.
    """
    tower = GenLIP(cfg)
    for name in TEXT_ONLY_PARTS:
        if hasattr(tower, name):
            delattr(tower, name)
    return tower
