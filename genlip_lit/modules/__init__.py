"""LightningModules: the shared base (optimizer, schedule, encoder contract) and the GenLIP module."""

from genlip_lit.modules.base import EncoderModule
from genlip_lit.modules.genlip import GenLIPModule

__all__ = ["EncoderModule", "GenLIPModule"]
