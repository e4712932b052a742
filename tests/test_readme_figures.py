"""The README's quickstart figures stay tied to the committed config: the block names the config's steps, batch
and seed, says the figures are per commit and shows the command that re-measures them
(`benchmarks/readme_figures.py`, whose table this also checks). The block is the README's part between the
`--8<-- [start:quickstart-figures]` and `[end:...]` markers, which the docs site includes (docs/figures.md)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import readme_figures  # noqa: E402


def _quickstart_block() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("--8<-- [start:quickstart-figures]")
    return text[start:text.index("--8<-- [end:quickstart-figures]", start)]


def test_readme_quickstart_block_names_the_committed_config() -> None:
    config = yaml.safe_load((REPO / readme_figures.CONFIG).read_text())
    block = " ".join(_quickstart_block().split())  # line breaks inside sentences do not matter
    match = re.search(r"batch (\d+), ([\d,]+) steps, seed (\d+)", block)
    assert match, "the README quickstart block must say 'batch B, N steps, seed S'"
    batch, steps, seed = int(match[1]), int(match[2].replace(",", "")), int(match[3])
    assert (batch, steps, seed) == (config["data"]["init_args"]["batch_size"], config["trainer"]["max_steps"],
                                    config["seed_everything"])
    assert "per commit" in block
    assert "python benchmarks/readme_figures.py --section quickstart" in block


def test_quickstart_table_prints_every_figure_of_a_run() -> None:
    row = {"seed": 1, "wall_s": 281.4, "cpu_s": 455.2, "val_loss": 0.29704, "objects_pct": {1: 94.0, 2: 83.5, 3: 72.0},
           "zero_shot": 0.8125, "cider": 6.281, "linear_probe": 0.338, "attentive_probe": None}
    header, rule, line = readme_figures.quickstart_table([row]).splitlines()
    assert header.count("|") == rule.count("|") == line.count("|")
    assert line == "| 1 | 94.0% / 83.5% / 72.0% | 0.2970 | 81.2% | 6.28 | 33.8% / - | 281 | 455 |"


def test_every_section_names_what_it_measures() -> None:
    assert set(readme_figures.SECTIONS) >= {"quickstart", "digits", "eval", "compare", "parity", "plan"}
    assert all(table and how for table, how in readme_figures.SECTIONS.values())


def test_spread_table_gives_mean_sd_and_range_over_seeds(tmp_path) -> None:
    rows = [{"seed": s, "wall_s": 1.0, "cpu_s": 1.0, "val_loss": loss, "objects_pct": {1: one, 2: 80.0, 3: 70.0},
             "zero_shot": None, "cider": 6.0, "linear_probe": 0.4, "attentive_probe": 0.5}
            for s, loss, one in ((2, 0.29, 95.0), (0, 0.30, 94.0), (1, 0.31, 96.0))]
    with open(tmp_path / readme_figures.ROWS, "w") as sink:  # as three parallel invocations append them
        sink.writelines(__import__("json").dumps(r) + "\n" for r in rows)
    read = readme_figures.read_rows(tmp_path)
    assert [r["seed"] for r in read] == [0, 1, 2] and read[0]["objects_pct"] == {1: 94.0, 2: 80.0, 3: 70.0}
    lines = readme_figures.spread_table(read).splitlines()
    assert lines[0] == "| figure | mean +- sd over 3 seeds | min - max |"
    assert "| 1-object scenes named right | 95.0% +- 1.0 | 94.0% - 96.0% |" in lines
    assert "| val/loss | 0.3000 +- 0.0100 | 0.2900 - 0.3100 |" in lines
    assert not any(line.startswith("| zero-shot") for line in lines)  # no run logged it: no line
