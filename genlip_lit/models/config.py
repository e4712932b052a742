"""The GenLIP architecture as one dataclass, with named presets.

    python -c "from genlip_lit.models.config import GenLIPConfig; print(GenLIPConfig.from_name('so16'))"

Presets l16 / so16 / g16 are the authors' released model configs (the architectures their checkpoints need,
key for key and shape for shape: tests/convert/test_official.py). l16_paper / g16_paper keep the sizes the
paper's Table 1 was first read as (24 x 1024, FFN 2816; 40 x 1536 with 24 heads), which no checkpoint uses.
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
    # text bottleneck (released L/16, g/16: 1024): token embeddings and the LM head are text_width wide, a
    # Linear(text_width, width) feeds the blocks and a Linear(width, text_width) follows the final norm on the
    # way to the LM head. None: text_width = width, no projections.
    text_width: int | None = None
    qkv_bias: bool = True  # bias on the query (and the gate, which the official code fuses with it), key, value
    out_bias: bool = True  # bias on the attention output projection
    ffn_bias: bool = True  # bias on every FFN linear (open_clip's GenLIP has none here or above)
    norm_eps: float = 1e-6
    layer_scale_init: float | None = 0.1  # None disables LayerScale
    drop_path: float = 0.0  # stochastic depth rate (see drop_path_schedule)
    # --- attention ---
    gated_attn: bool = True  # sigmoid gate on each head channel before o_proj (the paper's fix for sinks)
    attn_mode: Literal["prefix", "causal"] = "prefix"  # prefix-LM (paper) or fully causal (ablation)
    # --- positions ---
    pos_embed: Literal["mrope", "learned"] = "mrope"  # M-RoPE (paper) or learned absolute (ablation)
    rope_theta: float = 10000.0
    # (t, h, w) frequency channels; None: derived from head_dim. Interleaved: channel i is h if i % 3 == 1 and
    # i < 3*s_h, w if i % 3 == 2 and i < 3*s_w, else t; s_t is never read (the authors' rule, so L/16's
    # (8, 12, 12) at head dim 72 acts as (12, 12, 12)). Contiguous: blocks of s_t, s_h, s_w summing to head_dim/2.
    mrope_section: tuple[int, int, int] | None = None
    mrope_layout: Literal["interleaved", "contiguous"] = "interleaved"
    max_grid: int = 64  # learned absolute positions only: largest patch grid side
    max_text_len: int = 512  # learned absolute positions only: longest text
    # --- registers (ablation: 1 or 4 register tokens in front of the patches) ---
    num_registers: int = 0
    # --- training recipe where the paper is silent (the authors' code: uniform, all, xavier) ---
    drop_path_schedule: Literal["linear", "uniform"] = "linear"  # 0 -> drop_path over the blocks, or the full
    # rate in every block
    weight_decay_scope: Literal["matrices", "all"] = "matrices"  # exempt norms, biases, embeddings, gates,
    # registers and LayerScale from weight decay, or decay every parameter
    attn_init: Literal["trunc_normal", "xavier"] = "trunc_normal"  # q/gate/k/v/o weights: N(0, 0.02) truncated,
    # or xavier-uniform (q and gate drawn as the one fused [2d, d] matrix of the official code)
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
        if self.text_width is None:
            self.text_width = self.width
        if self.mrope_section is None:
            self.mrope_section = default_mrope_section(self.head_dim)
        self.mrope_section = tuple(int(s) for s in self.mrope_section)
        if len(self.mrope_section) != 3 or min(self.mrope_section) < 0:
            raise GenLIPUserError(f"mrope_section {list(self.mrope_section)} must be 3 non-negative channel counts")
        if self.mrope_layout == "contiguous" and sum(self.mrope_section) != self.head_dim // 2:
            raise GenLIPUserError(
                f"mrope_section {list(self.mrope_section)} must sum to head_dim/2 = {self.head_dim // 2} "
                "for the contiguous M-RoPE layout"
            )
        if self.loss_chunk_tokens < 0:
            raise GenLIPUserError(f"loss_chunk_tokens must be >= 0 (0 = plain logits), got {self.loss_chunk_tokens}")
        for key, allowed in (
            ("attn_mode", ("prefix", "causal")),
            ("pos_embed", ("mrope", "learned")),
            ("mrope_layout", ("interleaved", "contiguous")),
            ("ffn_type", ("swiglu", "gelu")),
            ("drop_path_schedule", ("linear", "uniform")),
            ("weight_decay_scope", ("matrices", "all")),
            ("attn_init", ("trunc_normal", "xavier")),
        ):
            if getattr(self, key) not in allowed:
                raise GenLIPUserError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")

    @property
    def attn_dim(self) -> int:
        """Width of the concatenated heads (differs from `width` when head_dim is set explicitly)."""
        return self.num_heads * self.head_dim

    @property
    def has_text_bottleneck(self) -> bool:
        """True when token embeddings and LM head are narrower (or wider) than the blocks."""
        return self.text_width != self.width

    def drop_path_rates(self) -> list[float]:
        """Stochastic-depth rate of each block under `drop_path_schedule`."""
        if self.drop_path_schedule == "uniform":
            return [self.drop_path] * self.depth
        return [self.drop_path * i / max(self.depth - 1, 1) for i in range(self.depth)]

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
    # The authors' released configs (configs/model_configs/genlip/genlip_{l16,so16,g16}_224.json).
    "l16": dict(width=1152, depth=24, num_heads=16, head_dim=72, ffn_hidden=2752, mrope_section=(8, 12, 12),
                text_width=1024, drop_path=0.1),
    "so16": dict(
        width=1152, depth=27, num_heads=16, head_dim=72, ffn_hidden=3072, mrope_section=(12, 12, 12), drop_path=0.1
    ),
    "g16": dict(width=1536, depth=40, num_heads=16, head_dim=96, ffn_hidden=4096, mrope_section=(16, 16, 16),
                text_width=1024, drop_path=0.2),
    # The paper's Table 1 as first read (no released checkpoint has these shapes); kept for earlier runs.
    "l16_paper": dict(width=1024, depth=24, num_heads=16, ffn_hidden=2816, mrope_section=(8, 12, 12), drop_path=0.1),
    "g16_paper": dict(width=1536, depth=40, num_heads=24, ffn_hidden=4096, mrope_section=(8, 12, 12), drop_path=0.2),
}
