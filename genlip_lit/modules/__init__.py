"""LightningModules: the shared base (optimizer, schedule, encoder contract), GenLIP and the baselines (contrastive, encoder-decoder)."""

from genlip_lit.modules.base import EncoderModule
from genlip_lit.modules.captioner import CaptionerModule
from genlip_lit.modules.contrastive import ContrastiveModule
from genlip_lit.modules.genlip import GenLIPModule

__all__ = ["CaptionerModule", "ContrastiveModule", "EncoderModule", "GenLIPModule"]
