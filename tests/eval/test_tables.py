"""The one table writer: markdown + CSV side by side, JSON with NaN as null, number formats."""

from __future__ import annotations

import json
import math

from genlip_lit.eval.tables import fmt, markdown_table, write_json, write_table


def test_markdown_csv_and_footer(tmp_path) -> None:
    md = write_table(tmp_path, ["run", "top-1"], [["a", "41.0%"]], raw=[["a", 0.41]], footer=["", "note"])
    assert md == "| run | top-1 |\n|---|---|\n| a | 41.0% |"
    assert (tmp_path / "table.md").read_text() == md + "\n\nnote\n"
    assert (tmp_path / "table.csv").read_text().splitlines() == ["run,top-1", "a,0.41"]
    write_table(tmp_path, ["x"], [["1"]], name="other", csv_header=["x raw"])
    assert (tmp_path / "other.csv").read_text().splitlines() == ["x raw", "1"]
    assert markdown_table(["a", "b"], [["1", "2"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_json_nan_is_null_and_formats(tmp_path) -> None:
    write_json(tmp_path / "r.json", {"a": [1.0, float("nan")], "b": {"c": math.nan}})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1.0, None], "b": {"c": None}}
    assert (fmt(0.4126, "pct"), fmt(6.071, "num2"), fmt(0.6789, "num3")) == ("41.3%", "6.07", "0.679")
    assert fmt(float("nan"), "pct") == "n/a" and fmt(None, "pct", "-") == "-" and fmt("x", "pct") == "x"
