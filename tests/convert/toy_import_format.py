"""A toy import format, all in this one file: the authors' checkpoint layout with the trunk renamed
(`visual.layers.{i}.` -> `encoder.block_{i}.`) and its own config marker (model_type 'genlip_renamed').

tests/convert/test_formats.py loads this file and imports a checkpoint of this format through `genlip import`
with nothing else changed: the file registering one class is the whole extension.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from genlip_lit.convert.formats import register_format
from genlip_lit.convert.official import OfficialFormat
from genlip_lit.models.config import GenLIPConfig


@register_format
class RenamedFormat(OfficialFormat):
    name = "renamed"
    description = "a toy layout (the authors' with the trunk renamed)"
    detected_by = "a renamed GenLIP config (model_type 'genlip_renamed')"
    layer_pattern = r"^encoder\.block_(\d+)\."

    def detect(self, config: dict[str, Any], directory: Path) -> bool:
        return config.get("model_type") == "genlip_renamed"

    def convert(self, state: dict[str, Tensor], cfg: GenLIPConfig, origin: str) -> dict[str, Tensor]:
        official = {re.sub(r"^encoder\.block_(\d+)\.", r"visual.layers.\1.", k): v for k, v in state.items()}
        return super().convert(official, cfg, origin)
