"""README shape: the contents list every section (so a new section cannot hide at line 900), and the top stays short."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _headings(text: str) -> list[str]:
    found, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"^#{2,3} ", line):
            found.append(line.split(" ", 1)[1])
    return found


def test_contents_list_every_section_in_order() -> None:
    start = README.index("## Contents")
    listed = re.findall(r"^\s*- \[(.*)\]\(#[^)]*\)$", README[start:README.index("\n## ", start + 1)], re.M)
    assert listed == _headings(README[README.index("\n## ", start + 1):])


def test_the_top_says_what_and_who_before_the_two_commands() -> None:
    top = README[:README.index("## Contents")]
    assert "**Who it is for**" in top and "## Set-up: two commands" in top
    assert "genlip fit --config experiments/quickstart.yaml" in top and "python -m pytest -q" in top
    assert len(top.splitlines()) < 90
