"""`EvalResult`: what one evaluation produced, in a form every logger and report writer can take."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EvalResult:
    """Scalars for every logger; images, tables and text for the loggers that take them and for reports."""

    scalars: dict[str, float] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # HWC uint8
    texts: dict[str, str] = field(default_factory=dict)  # markdown
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)  # (header, rows)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able extras for report.json

    def finite_scalars(self) -> dict[str, float]:
        """The scalars a metrics logger can plot (NaN marks "does not apply")."""
        return {k: float(v) for k, v in self.scalars.items() if not (isinstance(v, float) and math.isnan(v))}


def skipped(reason: str) -> EvalResult:
    """An evaluation that does not apply to this model or data, saying why (in report.json's details)."""
    return EvalResult(details={"skipped": reason})
