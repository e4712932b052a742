"""The GenLIP model core: plain torch, no Lightning and no data imports."""

from genlip_lit.models.attention import AttnLayout, GatedAttention, KVCache, prefix_lm_mask
from genlip_lit.models.config import PRESETS, GenLIPConfig
from genlip_lit.models.generate import GenerationOutput, generate, score
from genlip_lit.models.transformer import GenLIP

__all__ = [
    "AttnLayout",
    "GatedAttention",
    "GenLIP",
    "GenLIPConfig",
    "GenerationOutput",
    "KVCache",
    "PRESETS",
    "generate",
    "prefix_lm_mask",
    "score",
]
