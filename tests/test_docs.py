"""The documentation site (mkdocs.yml, docs/): it builds with warnings as errors, and its generated parts (the
layout page from the package's floors and docstrings, the API page from docstrings, the command reference) are
there and say what the code says."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "genlip_lit"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _test_layout_floors() -> dict[str, int]:
    sys.path.insert(0, str(REPO / "tests"))
    import test_layout

    return test_layout.FLOOR


def test_the_layout_page_lists_every_folder_with_its_floor_and_docstring() -> None:
    page = _hooks().layout_markdown()
    floors = _test_layout_floors()
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert folders and set(folders) <= set(floors)
    for folder in folders:
        row = re.search(rf"^\| (\d+) \| \[`{folder}/`\]", page, re.M)
        assert row and int(row[1]) == floors[folder], folder
        docstring = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert docstring and docstring in page, f"{folder}/__init__.py's docstring is not on the page"
        for module in (PACKAGE / folder).glob("*.py"):
            if module.name != "__init__.py":
                assert f"- `{module.name}`: " in page, f"{folder}/{module.name}"
    # rows go up the floors, as the arrows of the house do
    numbers = [int(n) for n in re.findall(r"^\| (\d+) \|", page, re.M)]
    assert numbers == sorted(numbers) and numbers[-1] == floors["cli"]


def test_first_sentence_stops_at_a_full_stop_not_at_an_abbreviation() -> None:
    first = _hooks().first_sentence
    assert first("Reads a file, e.g. a tar shard. Then more.\n\nNext paragraph.") == "Reads a file, e.g. a tar shard."
    assert first("One line\nwrapped: no stop") == "One line wrapped: no stop"


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path) -> None:
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING" not in done.stderr
    # the generated parts rendered: floors, the API from docstrings, the command reference, the README's figures
    layout = (site / "layout" / "index.html").read_text()
    assert 'id="checkpoints"' in layout and "Checkpoint trust" in layout
    api = (site / "api" / "index.html").read_text()
    for name in ("load_vision_encoder", "GenLIPModule", "GenLIPDataModule", "LinearProbe", "register",
                 "EncoderModule.encode_patches", "EncoderModule.skip_if_nonfinite"):  # the encoder contract
        assert name in api, name
    assert "peak learning rate" in api  # EncoderModule's `lr` argument, from its docstring
    commands = (site / "commands" / "index.html").read_text()
    assert 'id="genlip-optimize"' in commands and "--max-side" in commands
    # the README's quickstart figures, included from README.md (one copy): its first row's cells are on the page
    readme = (REPO / "README.md").read_text()
    marked = readme[readme.index("[start:quickstart-figures]"):readme.index("[end:quickstart-figures]")]
    row = next(line for line in marked.splitlines() if re.match(r"^\| \d", line))
    figures = (site / "figures" / "index.html").read_text()
    for cell in filter(None, (c.strip() for c in row.split("|"))):
        assert f"<td>{cell}</td>" in figures.replace("<code>", "`").replace("</code>", "`"), cell


def test_every_readme_part_the_docs_include_is_marked_once() -> None:
    """The docs include parts of the README (one copy of the figures, the set-up, ...): each name they include
    has exactly one start and one end marker in README.md, so moving README text cannot silently drop it."""
    readme = (REPO / "README.md").read_text()
    included = set()
    for page in (REPO / "docs").glob("*.md"):
        included |= set(re.findall(r'^--8<-- "README\.md:([\w-]+)"$', page.read_text(), re.M))
    assert {"quickstart-figures", "setup", "what"} <= included
    for name in included:
        start, end = readme.count(f"--8<-- [start:{name}]"), readme.count(f"--8<-- [end:{name}]")
        assert (start, end) == (1, 1), name
        assert readme.index(f"[start:{name}]") < readme.index(f"[end:{name}]"), name
