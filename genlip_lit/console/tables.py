"""The one table writer: markdown for reading, CSV for spreadsheets (JSON for programs: storage.paths.write_json).

    md = write_table(out_dir, ["run", "top-1"], [["a", "41.0%"]], raw=[["a", 0.41]])   # table.md + table.csv
    md = metric_table({"probe/linear_top1": 0.41, "probe/num_images": 120})           # | metric | value |

Used by `genlip eval`, `probe`, `eval-res`, `compare` and `llm-probe`, the probe reports of the callbacks, the
evaluation report (eval/report.py) and the model card of `genlip export` (encoders/model_card.py). On the lowest
floor (console/: what the user reads) so that every layer that writes a table can use it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FORMATS = {"pct": lambda v: f"{100 * v:.1f}%", "num2": lambda v: f"{v:.2f}", "num3": lambda v: f"{v:.3f}",
           "num4": lambda v: f"{v:.4f}"}


def fmt(value: Any, kind: str = "num4", missing: str = "n/a") -> str:
    """A cell: `kind` pct (41.0%), num2, num3 or num4; None and NaN show as `missing`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return FORMATS[kind](value)
    return str(value)


def markdown_row(cells: Sequence[Any]) -> str:
    """One `| a | b |` line (a row built on its own, e.g. `genlip plan`'s one-line summary of a plan)."""
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = [markdown_row(header), "|" + "---|" * len(header)]
    return "\n".join(lines + [markdown_row(row) for row in rows])


def metric_table(values: Mapping[str, Any]) -> str:
    """A `| metric | value |` table: floats to 4 decimals (NaN as n/a), anything else as written."""
    return markdown_table(["metric", "value"],
                          [[k, fmt(v) if isinstance(v, float) else v] for k, v in values.items()])


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_table(
    output: str | Path,
    header: Sequence[str],
    shown: Sequence[Sequence[Any]],
    raw: Sequence[Sequence[Any]] | None = None,
    *,
    name: str = "table",
    footer: Sequence[str] = (),
    csv_header: Sequence[str] | None = None,
) -> str:
    """OUTPUT/NAME.md (the markdown table, then `footer` lines) and OUTPUT/NAME.csv (`raw` rows, unformatted
    numbers; default the shown ones); returns the markdown table."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    table = markdown_table(header, shown)
    (output / f"{name}.md").write_text("\n".join([table, *footer]) + "\n", encoding="utf-8")
    (output / f"{name}.csv").write_text(csv_text(csv_header or header, raw if raw is not None else shown),
                                        encoding="utf-8")
    return table
