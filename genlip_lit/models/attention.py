"""Gated multi-head attention with prefix-LM masking, a KV cache, and interchangeable kernels.

    python -m pytest tests/models/test_attention.py -q

Gated attention (paper, against attention sinks): G = sigmoid(X W_g + b_g), out = o_proj(G * Attn(X)), one gate
value per head channel. The official code computes [q ; gate] with one Linear(d, 2d); we keep W_g as its own
`gate_proj` (the same function: convert/official.py splits the fused weight) so the optimizer can exempt the
gate from weight decay.

Kernels (`impl`):
- "sdpa": exact prefix-LM with fused kernels: the bidirectional prefix (registers + patches) runs one unmasked
  SDPA call; text queries run a second call over all keys with a lower-right causal mask. Neither needs a dense
  mask, so flash / memory-efficient kernels stay available on GPU.
- "mask": one SDPA call with a dense boolean mask (the reference arrangement; also the packed-sequence path).
- "manual": explicit softmax that also returns the attention weights (for the attention-sink monitor).
- "flex": FlexAttention with a block mask (packed sequences; compiled on CUDA).
- "auto" (default): "sdpa" on CUDA; "mask" on CPU, where PyTorch's CPU SDPA kernels run the dense-mask call
  faster than the two-call split at small sizes (measured in the tiny preset's training step).
All compute the same function; tests check they agree.

Packed stage-2 rows (`PackedLayout`) hold several samples: a token attends only within its own sample, with that
sample's prefix-LM rule. "auto" runs them with FlexAttention block masks on CUDA (blocks of 128 x 128 tokens that
no sample spans are skipped) and with SDPA over a dense boolean mask on CPU, where FlexAttention has no backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right
from torch.utils._python_dispatch import _get_current_dispatch_mode

from genlip_lit.models.rope import apply_rotary


@dataclass
class AttnLayout:
    """Where each query and key sits: enough to build the prefix-LM or causal mask without materialising it.

    Queries are the tokens at absolute positions [q_start, q_start + n_q); keys are positions [0, n_k).
    The first `num_prefix` positions form the bidirectional prefix (0 in fully causal mode).
    """

    num_prefix: int
    q_start: int = 0

    def dense_mask(self, n_q: int, n_k: int, device: torch.device | None = None) -> Tensor:
        """[n_q, n_k] bool, True where the query may attend the key."""
        q = torch.arange(self.q_start, self.q_start + n_q, device=device)[:, None]
        k = torch.arange(n_k, device=device)[None, :]
        in_prefix_k = k < self.num_prefix
        q_is_text = q >= self.num_prefix
        # prefix queries see the whole prefix; text queries see the prefix and earlier-or-same text.
        return in_prefix_k | (q_is_text & (k <= q))


class PackedLayout:
    """Per-row sample segments of a packed batch: enough for a dense mask or a FlexAttention block mask.

    segment_ids [R, T]: sample number per token (0 = padding, which attends only to padding so no row of the
    softmax is empty); prefix [R, T]: the token belongs to its sample's bidirectional prefix (registers, patches).
    Query q may attend key k when both are in one segment and k is in the prefix or k <= q. The masks are built
    once per forward pass and shared by every layer.
    """

    def __init__(self, segment_ids: Tensor, prefix: Tensor) -> None:
        self.segment_ids, self.prefix = segment_ids, prefix
        self._dense: Tensor | None = None
        self._block_mask = None

    def allowed(self, b: Tensor, q: Tensor, k: Tensor) -> Tensor:
        """The mask rule on index tensors (FlexAttention's mask_mod signature, minus the head)."""
        seg = self.segment_ids
        return (seg[b, q] == seg[b, k]) & (self.prefix[b, k] | (k <= q))

    def dense_mask(self, n_q: int, n_k: int, device: torch.device | None = None) -> Tensor:
        """[R, 1, T, T] bool, True where the query may attend the key."""
        if self._dense is None:
            seg = self.segment_ids
            n = seg.shape[1]
            if (n_q, n_k) != (n, n):
                raise ValueError(f"packed attention runs on whole rows of {n} tokens, got {n_q} queries x {n_k} keys")
            pos = torch.arange(n, device=seg.device)
            causal = pos[None, :, None] >= pos[None, None, :]
            same = seg[:, :, None] == seg[:, None, :]
            self._dense = (same & (self.prefix[:, None, :] | causal))[:, None]
        return self._dense

    def block_mask(self):  # noqa: ANN201 - torch.nn.attention.flex_attention.BlockMask
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            rows, n = self.segment_ids.shape

            def mask_mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
                return self.allowed(b, q, k)

            device = self.segment_ids.device
            # compiled mask creation avoids materialising [R, T, T] on the GPU at 16K-token rows
            self._block_mask = create_block_mask(mask_mod, rows, None, n, n, device=device, _compile=device.type == "cuda")
        return self._block_mask


_compiled_flex = None


def flex_attend(q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout) -> Tensor:
    """FlexAttention under the packed layout: compiled on CUDA (fused kernel), eager elsewhere (tests, CPU)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not q.is_cuda:
        import warnings

        with warnings.catch_warnings():  # eager flex is only for checking; it says so on every call
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return flex_attention(q, k, v, block_mask=layout.block_mask())
    if _compiled_flex is None:
        # default dynamic-shape handling: packed rows change length from step to step, so after the first
        # recompile the kernel is generated for symbolic lengths instead of once per length
        _compiled_flex = torch.compile(flex_attention)
    from genlip_lit.models.flex_pad import flex_any_head_dim  # zero-pads a head dim the kernel refuses (72)

    return flex_any_head_dim(_compiled_flex, q, k, v, block_mask=layout.block_mask())


def prefix_lm_mask(num_prefix: int, seq_len: int, device: torch.device | None = None) -> Tensor:
    """[N, N] bool prefix-LM mask: prefix tokens see the prefix; later tokens see the prefix and causally the rest."""
    return AttnLayout(num_prefix).dense_mask(seq_len, seq_len, device)


class KVCache:
    """Preallocated keys/values for every layer, filled left to right during generation."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch_size, num_heads, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0  # tokens already stored (the same for every layer once a forward pass finishes)
        self.max_len = max_len
        # Filled by the model on the first (prefill) call: needed to place later text tokens.
        self.num_prefix = 0
        self.text_start = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys/values at [length, length + n) and return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep only the batch rows in `index` (drops finished sequences)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]


def attend(
    q: Tensor, k: Tensor, v: Tensor, layout: AttnLayout | PackedLayout, impl: str
) -> tuple[Tensor, Tensor | None]:
    """Masked attention of q [B,H,Nq,D] over k/v [B,H,Nk,D] under `layout`. Returns (out, weights or None)."""
    n_q, n_k = q.shape[2], k.shape[2]
    packed = isinstance(layout, PackedLayout)
    if impl == "auto" or (packed and impl == "sdpa"):  # the split kernel is for one sample per row
        impl = ("flex" if packed else "sdpa") if q.is_cuda else "mask"
    if impl == "flex":
        if not packed:
            raise ValueError("attention impl 'flex' is for packed sequences (PackedLayout)")
        return flex_attend(q, k, v, layout), None
    if impl == "manual":
        scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        scores = scores.masked_fill(~layout.dense_mask(n_q, n_k, q.device), float("-inf"))
        weights = scores.softmax(dim=-1)
        return (weights @ v.float()).to(q.dtype), weights
    if impl == "mask":
        mask = layout.dense_mask(n_q, n_k, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    if impl != "sdpa":
        raise ValueError(f"unknown attention impl {impl!r} (auto, sdpa, mask, manual, flex)")
    return _attend_split(q, k, v, layout), None


def _attend_split(q: Tensor, k: Tensor, v: Tensor, layout: AttnLayout) -> Tensor:
    """Prefix-LM without a dense mask: unmasked prefix block + lower-right causal text block."""
    n_q, n_k = q.shape[2], k.shape[2]
    # Queries of this call that fall inside the bidirectional prefix.
    n_prefix_q = max(0, min(n_q, layout.num_prefix - layout.q_start))
    outs = []
    if n_prefix_q:
        p = layout.num_prefix
        outs.append(F.scaled_dot_product_attention(q[:, :, :n_prefix_q], k[:, :, :p], v[:, :, :p]))
    n_text_q = n_q - n_prefix_q
    if n_text_q:
        q_text = q[:, :, n_prefix_q:]
        if n_text_q == 1:
            # A single new token at the end sees every key: no mask at all (the decode step).
            outs.append(F.scaled_dot_product_attention(q_text, k, v))
        elif n_text_q == n_k:
            outs.append(F.scaled_dot_product_attention(q_text, k, v, is_causal=True))
        elif _get_current_dispatch_mode() is not None:
            # CausalBias is a tensor subclass, which cannot be created under a dispatch mode (e.g. the FLOP
            # counter of callbacks/throughput.py): the same rows of the layout's dense mask instead.
            text_rows = AttnLayout(layout.num_prefix, layout.q_start + n_prefix_q)
            mask = text_rows.dense_mask(n_text_q, n_k, q.device)
            outs.append(F.scaled_dot_product_attention(q_text, k, v, attn_mask=mask))
        else:
            outs.append(F.scaled_dot_product_attention(q_text, k, v, attn_mask=causal_lower_right(n_text_q, n_k)))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


class GatedAttention(nn.Module):
    """Multi-head self-attention with rotary positions and an optional per-channel sigmoid output gate."""

    def __init__(
        self, width: int, num_heads: int, head_dim: int, gated: bool = True, qkv_bias: bool = True,
        out_bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.gated = num_heads, head_dim, gated
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(width, inner, bias=qkv_bias)
        # the gate is the second half of the official fused q projection: it has a bias exactly when q has
        self.gate_proj = nn.Linear(width, inner, bias=qkv_bias) if gated else None
        self.k_proj = nn.Linear(width, inner, bias=qkv_bias)
        self.v_proj = nn.Linear(width, inner, bias=qkv_bias)
        self.o_proj = nn.Linear(inner, width, bias=out_bias)
        self.impl = "auto"

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        layout: AttnLayout | PackedLayout,
        cache: KVCache | None = None,
        layer_idx: int = 0,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        b, n, _ = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        impl = "manual" if return_weights else self.impl
        out, weights = attend(q, k, v, layout, impl)
        out = out.transpose(1, 2).reshape(b, n, -1)
        if self.gate_proj is not None:
            out = torch.sigmoid(self.gate_proj(x)) * out
        return self.o_proj(out), weights
