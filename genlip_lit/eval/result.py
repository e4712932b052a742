"""`EvalResult`: what one evaluation produced, in a form every logger and report writer can take."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# fewer held-out images than this and a figure moves by several points per image: the one threshold behind the
# report notes (`held_out_note`), the evaluation callbacks' start line and `genlip optimize`'s small-val warning
MIN_RELIABLE_IMAGES = 50


@dataclass
class EvalResult:
    """Scalars for every logger; images, tables and text for the loggers that take them and for reports."""

    scalars: dict[str, float] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # HWC uint8
    texts: dict[str, str] = field(default_factory=dict)  # markdown
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)  # (header, rows)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able extras for report.json; "note": one sentence
    # printed beside the figures (why one is missing, how to read it)

    def finite_scalars(self) -> dict[str, float]:
        """The scalars a metrics logger can plot (NaN marks "does not apply")."""
        return {k: float(v) for k, v in self.scalars.items() if not (isinstance(v, float) and math.isnan(v))}


def held_out_note(details: dict[str, Any]) -> str | None:
    """How many held-out images a result was scored on (`details["num_images"]`, which every evaluation sets),
    with a warning under `MIN_RELIABLE_IMAGES`; None when the evaluation was skipped or names no count."""
    n = details.get("num_images")
    if not isinstance(n, int) or "skipped" in details:
        return None
    images = f"{n:,} held-out image{'s' if n != 1 else ''}"
    if n < MIN_RELIABLE_IMAGES:
        return (f"on {images} only: fewer than {MIN_RELIABLE_IMAGES}, a rough figure (hold out more: `genlip optimize "
                "--val-fraction`)")
    return f"on {images}"


def skipped(reason: str) -> EvalResult:
    """An evaluation that does not apply to this model or data, saying why (in report.json's details)."""
    return EvalResult(details={"skipped": reason})
