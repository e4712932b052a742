"""The one table writer (console/tables.py): markdown + CSV side by side, number formats, metric tables."""

from __future__ import annotations

from genlip_lit.console.tables import fmt, markdown_table, metric_table, write_table


def test_markdown_csv_and_footer(tmp_path) -> None:
    md = write_table(tmp_path, ["run", "top-1"], [["a", "41.0%"]], raw=[["a", 0.41]], footer=["", "note"])
    assert md == "| run | top-1 |\n|---|---|\n| a | 41.0% |"
    assert (tmp_path / "table.md").read_text() == md + "\n\nnote\n"
    assert (tmp_path / "table.csv").read_text().splitlines() == ["run,top-1", "a,0.41"]
    write_table(tmp_path, ["x"], [["1"]], name="other", csv_header=["x raw"])
    assert (tmp_path / "other.csv").read_text().splitlines() == ["x raw", "1"]
    assert markdown_table(["a", "b"], [["1", "2"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_formats() -> None:
    assert (fmt(0.4126, "pct"), fmt(6.071, "num2"), fmt(0.6789, "num3")) == ("41.3%", "6.07", "0.679")
    assert fmt(float("nan"), "pct") == "n/a" and fmt(None, "pct", "-") == "-" and fmt("x", "pct") == "x"


def test_metric_table_as_the_eval_report_and_the_model_card_show_it() -> None:
    table = metric_table({"probe/linear_top1": 0.41267, "probe/num_images": 120, "sink/skipped": float("nan"),
                          "probe/kind": "linear"})
    assert table.splitlines() == ["| metric | value |", "|---|---|", "| probe/linear_top1 | 0.4127 |",
                                  "| probe/num_images | 120 |", "| sink/skipped | n/a |", "| probe/kind | linear |"]
