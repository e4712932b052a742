"""README shape: it fits a screen and a half, the contents list every section (so a new section cannot hide at
the bottom), the top says what and who before the two commands, and every docs page it links exists (the
rest of the documentation is the site in docs/, tests/test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


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


def test_the_readme_fits_a_screen_and_a_half() -> None:
    assert len(README.splitlines()) <= 300


def test_every_docs_page_the_readme_links_exists_and_every_page_is_linked() -> None:
    linked = set(re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README))
    assert linked
    missing = [link for link in sorted(linked) if not (REPO / link).is_file()]
    assert not missing, f"README links docs pages that do not exist: {missing}"
    pages = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_the_commands_ci_runs_are_the_readmes() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -q -c constraints.txt -e ".[dev]"' in ci and "python -m pytest -q" in ci
    assert 'pip install -c constraints.txt -e ".[dev]" && python -m pytest -q' in README
