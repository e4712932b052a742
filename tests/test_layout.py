"""The arrows of the house point down: cli/commands -> callbacks/studies -> eval -> modules -> models/data.
Every import counts, also those inside functions (a lazy import hides a cycle, it does not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "genlip_lit"
# folder -> genlip_lit folders (and top-level modules) it must never import
FORBIDDEN = {
    "studies": {"commands", "cli"},
    "eval": {"callbacks", "commands", "cli", "studies"},
    "callbacks": {"commands", "cli"},
    "modules": {"eval", "callbacks", "commands", "cli", "studies"},
    "models": {"modules", "eval", "callbacks", "commands", "cli", "export", "studies"},
    "data": {"models", "modules", "eval", "callbacks", "commands", "cli", "export", "studies"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _files(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("folder", list(FORBIDDEN))
def test_no_folder_imports_upwards(folder) -> None:
    for path in _files(folder):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "genlip_lit" and len(parts) > 1:
                assert parts[1] not in FORBIDDEN[folder], f"{path.name} imports {name}"
    if folder == "models":  # plain torch, and data only through the shared batch type
        for path in _files(folder):
            data = {n for n in _imports(path) if n.startswith("genlip_lit.data")}
            assert data <= {"genlip_lit.data.batch"}, path.name


def test_the_evaluation_library_has_no_argparse_and_no_lightning() -> None:
    for path in _files("eval"):
        imported = {n.split(".")[0] for n in _imports(path)}
        assert not imported & {"argparse", "lightning", "pytorch_lightning", "jsonargparse"}, path.name
