"""Encoders out: `genlip export` (export.py: safetensors + config, a loader without Lightning), the timm form
(timm.py) and the model card (model_card.py). Checkpoints of other implementations come in through convert/."""
