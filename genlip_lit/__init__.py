"""genlip_lit: GenLIP (generative language-image pretraining) as a Lightning experiment framework."""

__version__ = "0.1.0"
