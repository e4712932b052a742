"""benchmarks/command_reference.py: the docs site's command reference (docs/commands.md) is what the commands'
parsers generate, so a changed option fails CI until `python benchmarks/command_reference.py --write` is run."""

from __future__ import annotations

import importlib.util
import os

from helpers import REPO


def _script():
    spec = importlib.util.spec_from_file_location("command_reference",
                                                  os.path.join(REPO, "benchmarks", "command_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_command_reference_is_up_to_date() -> None:
    reference = _script()
    with open(os.path.join(REPO, "docs", "commands.md"), encoding="utf-8") as fh:
        block = reference.page_block(fh.read())
    assert block, "docs/commands.md lost its command-reference markers"
    generated = reference.generate()
    assert block == generated, "stale: run python benchmarks/command_reference.py --write"


def test_the_reference_lists_every_command_with_its_options() -> None:
    from genlip_lit.cli import command_table

    block = _script().generate()
    for name in command_table():
        assert f"| `{name}` |" in block, name
    # options come with the type and default that --help shows, in their groups
    assert "- `--budget`: most training images (type: int, default: 5000)" in block
    assert "*embedded synthetic data*" in block and "| `probe` | " in block and "`--ckpt`, `--data` |" in block
    assert "path&lt;TAB&gt;caption" in block  # no raw HTML-like text: the site would read <TAB> as a tag
    assert "### `genlip optimize`" in block  # a heading per command: a table-of-contents entry, a link target
