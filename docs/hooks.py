"""mkdocs hook: the generated part of docs/layout.md.

The layout page holds the line `<!-- generated:layout -->`; at build time it becomes, for every folder of the
package by floor (tests/test_layout.py's FLOOR, the rule the tests enforce), the folder's `__init__` docstring
and one line per module (the first sentence of its docstring). Read with `ast`, nothing is imported, so the page
says what the code says at the commit being built and cannot go stale. A folder or module without a docstring
fails the build (mkdocs --strict turns the warning into an error).
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "genlip_lit"
MARKER = "<!-- generated:layout -->"
log = logging.getLogger("mkdocs.plugins.genlip_layout")


def floors() -> dict[str, int]:
    """FLOOR from tests/test_layout.py, read as a literal (importing the test module would need pytest)."""
    tree = ast.parse((REPO / "tests" / "test_layout.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FLOOR" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("tests/test_layout.py has no FLOOR = {...} literal")


def docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def first_sentence(text: str) -> str:
    """The docstring's first paragraph up to its first full stop followed by a space (or the whole paragraph)."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?(?<!e\.g)(?<!i\.e)\.)(\s|$)", paragraph)
    return match[1] if match else paragraph


def layout_markdown() -> str:
    lines = ["| floor | folder or root module | what it is |", "|---|---|---|"]
    sections = []
    for name, floor in sorted(floors().items(), key=lambda item: (item[1], item[0])):
        folder = PACKAGE / name
        init = folder / "__init__.py" if folder.is_dir() else PACKAGE / f"{name}.py"
        if not init.exists():
            log.warning("layout: tests/test_layout.py gives %r a floor but genlip_lit has no such folder", name)
            continue
        text = docstring(init)
        if not text:
            log.warning("layout: %s has no docstring: say what the folder is for", init.relative_to(REPO))
        label = f"`{name}/`" if folder.is_dir() else f"`{name}.py`"
        anchor = f"[{label}](#{name.replace('_', '')})" if folder.is_dir() else label
        lines.append(f"| {floor} | {anchor} | {first_sentence(text).replace('|', chr(92) + '|')} |")
        if folder.is_dir():
            sections += ["", f"## {name}/ {{#{name.replace('_', '')}}}", "", f"Floor {floor}.", "", text, ""]
            for module in sorted(folder.glob("*.py")):
                if module.name == "__init__.py":
                    continue
                summary = first_sentence(docstring(module))
                if not summary:
                    log.warning("layout: %s has no docstring", module.relative_to(REPO))
                sections.append(f"- `{module.name}`: {summary}")
    return "\n".join(lines + sections) + "\n"


def on_page_markdown(markdown: str, page, **_) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, layout_markdown())
    return markdown
