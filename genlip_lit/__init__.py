"""genlip_lit: GenLIP (generative language-image pretraining) as a Lightning experiment framework."""

__version__ = "0.1.0"

import os as _os

# Older litdata releases ask PyPI for a newer version whenever a dataset is built; this project never goes
# online by itself (set before any litdata import, whichever module imports it first).
_os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")


def __getattr__(name: str):
    # `genlip_lit.load_vision_encoder(DIR)` without importing torch for every `import genlip_lit`
    if name == "load_vision_encoder":
        from genlip_lit.encoders.export import load_vision_encoder

        return load_vision_encoder
    raise AttributeError(f"module 'genlip_lit' has no attribute {name!r}")
