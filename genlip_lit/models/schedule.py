"""The one learning-rate schedule of the project: linear warmup, then cosine decay to a floor.

    python -c "from genlip_lit.models.schedule import warmup_cosine; print([round(warmup_cosine(s, 10, 2), 2) for s in range(10)])"

Beside the model (plain math, no torch): used by every training module (`modules/base.py`), the attentive probe (`eval/probes.py`) and the LLM probe's
projector (`studies/llm_probe.py`). Library code uses it without importing Lightning.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to `min_ratio` at `total_steps` (and after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
