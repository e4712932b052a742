"""The GenLIP architecture as one dataclass, with named presets.

    python -c "from genlip_lit.models.config import GenLIPConfig; print(GenLIPConfig.from_name('so16'))"

Presets l16 / so16 / g16 follow the paper's Table 1 (and the official head dims / M-RoPE sections);
tiny / s16 / b16 are ours, sized for CPU runs and tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from genlip_lit.errors import GenLIPUserError


@dataclass
class GenLIPConfig:
    """Every architectural choice of a GenLIP transformer, including the paper's ablation switches."""

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    head_dim: int | None = None  # None: width // num_heads (So/16 uses 72 with width 1152 and 16 heads)
    ffn_hidden: int = 2048
    ffn_type: Literal["swiglu", "gelu"] = "swiglu"  # SwiGLU in the official configs
    patch_size: int = 16
    in_chans: int = 3
    vocab_size: int = 49408  # set from the tokenizer by the LightningModule
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    layer_scale_init: float | None = 0.1  # None disables LayerScale
    drop_path: float = 0.0  # stochastic depth rate of the last block (linearly increasing from 0)
    # --- attention ---
    gated_attn: bool = True  # sigmoid gate on each head channel before o_proj (the paper's fix for sinks)
    attn_mode: Literal["prefix", "causal"] = "prefix"  # prefix-LM (paper) or fully causal (ablation)
    # --- positions ---
    pos_embed: Literal["mrope", "learned"] = "mrope"  # M-RoPE (paper) or learned absolute (ablation)
    rope_theta: float = 10000.0
    mrope_section: tuple[int, int, int] | None = None  # (t, h, w) channels; None: derived from head_dim
    mrope_layout: Literal["interleaved", "contiguous"] = "interleaved"
    max_grid: int = 64  # learned absolute positions only: largest patch grid side
    max_text_len: int = 512  # learned absolute positions only: longest text
    # --- registers (ablation: 1 or 4 register tokens in front of the patches) ---
    num_registers: int = 0
    # --- implementation (no effect on the function computed) ---
    loss_chunk_tokens: int = 0  # LM-head cross-entropy in chunks of this many tokens (models/lm_loss.py); 0 = plain
    grad_checkpointing: bool = False  # recompute each block in backward: activation memory O(depth) -> O(1) blocks
    compile_blocks: bool = False  # torch.compile each block (compiled lazily on first use; CUDA recommended)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.width % self.num_heads:
                raise GenLIPUserError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
            self.head_dim = self.width // self.num_heads
        if self.head_dim % 2:
            raise GenLIPUserError(f"head_dim must be even for rotary positions, got {self.head_dim}")
        if self.mrope_section is None:
            self.mrope_section = default_mrope_section(self.head_dim)
        self.mrope_section = tuple(int(s) for s in self.mrope_section)
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2:
            raise GenLIPUserError(
                f"mrope_section {list(self.mrope_section)} must have 3 entries summing to head_dim/2 = {self.head_dim // 2}"
            )
        if self.loss_chunk_tokens < 0:
            raise GenLIPUserError(f"loss_chunk_tokens must be >= 0 (0 = plain logits), got {self.loss_chunk_tokens}")
        for key, allowed in (
            ("attn_mode", ("prefix", "causal")),
            ("pos_embed", ("mrope", "learned")),
            ("mrope_layout", ("interleaved", "contiguous")),
            ("ffn_type", ("swiglu", "gelu")),
        ):
            if getattr(self, key) not in allowed:
                raise GenLIPUserError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")

    @property
    def attn_dim(self) -> int:
        """Width of the concatenated heads (differs from `width` when head_dim is set explicitly)."""
        return self.num_heads * self.head_dim

    @classmethod
    def from_name(cls, name: str, **overrides) -> GenLIPConfig:
        """A preset by name, with any field overridden; unknown names or keys raise a clear error."""
        if name not in PRESETS:
            raise GenLIPUserError(f"unknown GenLIP preset {name!r}; choose one of {sorted(PRESETS)}")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise GenLIPUserError(f"unknown architecture key(s) {unknown}; valid keys: {sorted(valid)}")
        return cls(**{**PRESETS[name], **overrides})


def default_mrope_section(head_dim: int) -> tuple[int, int, int]:
    """Split head_dim/2 rotary channels over (t, h, w): 1/4 to t, the rest shared by h and w.

    Matches the official sections: head dim 64 -> (8, 12, 12); for 72 the official So/16 uses (12, 12, 12),
    which its preset sets explicitly.
    """
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return (half - 2 * h, h, h)


PRESETS: dict[str, dict] = {
    # CPU-sized: the quickstart trains it in minutes on 64 px images with 8 px patches.
    "tiny": dict(width=128, depth=4, num_heads=4, ffn_hidden=352, patch_size=8, drop_path=0.0),
    "s16": dict(width=384, depth=12, num_heads=6, ffn_hidden=1024, drop_path=0.1),
    "b16": dict(width=768, depth=12, num_heads=12, ffn_hidden=2048, drop_path=0.1),
    # Paper Table 1.
    "l16": dict(width=1024, depth=24, num_heads=16, ffn_hidden=2816, mrope_section=(8, 12, 12), drop_path=0.1),
    "so16": dict(
        width=1152, depth=27, num_heads=16, head_dim=72, ffn_hidden=3072, mrope_section=(12, 12, 12), drop_path=0.1
    ),
    "g16": dict(width=1536, depth=40, num_heads=24, ffn_hidden=4096, mrope_section=(8, 12, 12), drop_path=0.2),
}
