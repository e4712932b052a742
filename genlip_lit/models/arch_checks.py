"""Type and range checks of `GenLIPConfig` fields given as plain data (a config's arch_overrides, an export's
config.json), so that a bad value is one error line naming the key instead of a TypeError deep in torch, a NaN
feature (`norm_eps: -1`) or a silent change.

    python -c "from genlip_lit.models.arch_checks import check_architecture; check_architecture({'depth': 0}, 'x')"
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from genlip_lit.errors import GenLIPUserError

POSITIVE_INTS = ("width", "depth", "num_heads", "ffn_hidden", "patch_size", "in_chans", "vocab_size", "max_grid",
                 "max_text_len")
NON_NEGATIVE_INTS = ("num_registers", "loss_chunk_tokens")
BOOLS = ("qkv_bias", "gated_attn", "grad_checkpointing", "compile_blocks")
CHOICES = {
    "ffn_type": ("swiglu", "gelu"),
    "attn_mode": ("prefix", "causal"),
    "pos_embed": ("mrope", "learned"),
    "mrope_layout": ("interleaved", "contiguous"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_architecture(fields: Mapping[str, Any], where: str) -> None:
    """Raise a one-line GenLIPUserError (`{where}.{key} ...`) for the first field of the wrong type or range.

    Unknown keys are left to `GenLIPConfig.from_name`, which lists the valid ones."""
    if not isinstance(fields, Mapping):
        raise GenLIPUserError(f"{where} must be a mapping of GenLIPConfig fields, got {type(fields).__name__}")
    for key, value in fields.items():
        problem = None
        if key in POSITIVE_INTS and not (_is_int(value) and value > 0):
            problem = "must be a positive integer"
        elif key in NON_NEGATIVE_INTS and not (_is_int(value) and value >= 0):
            problem = "must be an integer >= 0"
        elif key == "head_dim" and value is not None and not (_is_int(value) and value > 0):
            problem = "must be a positive integer or null"
        elif key in BOOLS and not isinstance(value, bool):
            problem = "must be true or false"
        elif key in CHOICES and value not in CHOICES[key]:
            problem = f"must be one of {list(CHOICES[key])}"
        elif key in ("norm_eps", "rope_theta") and not (_is_number(value) and value > 0):
            problem = "must be a finite number > 0"
        elif key == "drop_path" and not (_is_number(value) and 0 <= value < 1):
            problem = "must be a number in [0, 1)"
        elif key == "layer_scale_init" and value is not None and not _is_number(value):
            problem = "must be a finite number or null"
        elif key == "mrope_section" and value is not None and not (
            isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(v) and v >= 0 for v in value)
        ):
            problem = "must be 3 integers >= 0 or null"
        if problem:
            raise GenLIPUserError(f"{where}.{key} {problem}, got {value!r}")


def check_arch_args(arch: Any, arch_overrides: Any, where: str = "model") -> None:
    """A module's `arch` (a preset name) and `arch_overrides` (a mapping of GenLIPConfig fields)."""
    if not isinstance(arch, str):
        raise GenLIPUserError(f"{where}.arch must be a preset name (a string), got {arch!r}")
    if arch_overrides is not None:
        check_architecture(arch_overrides, f"{where}.arch_overrides")
