"""LightningModules: the shared base (optimizer, schedule, encoder contract), GenLIP and the contrastive baselines."""

from genlip_lit.modules.base import EncoderModule
from genlip_lit.modules.contrastive import ContrastiveModule
from genlip_lit.modules.genlip import GenLIPModule

__all__ = ["ContrastiveModule", "EncoderModule", "GenLIPModule"]
