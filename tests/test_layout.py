"""The arrows of the house point down. Every folder of the package has a floor number and may import only
folders on lower floors; every import counts, also those inside functions (a lazy import hides a cycle, it does
not remove it). A new folder must be given its floor here, and the package root keeps only its entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "genlip_lit"
# folder (or root module) -> floor. Imports go strictly downwards: commands -> callbacks/studies -> eval ->
# modules -> models -> data; storage, console, checkpoints and perf are floors every layer above may use.
FLOOR = {
    "errors": 0,
    "storage": 1, "console": 1,
    "checkpoints": 2, "perf": 2,
    "data": 3,
    "models": 4,
    "modules": 5, "ingest": 5,
    "eval": 6, "encoders": 6,
    "studies": 7, "callbacks": 7, "convert": 7,
    "plan": 8,
    "commands": 9,
    "cli": 10, "__init__": 10,
}
ROOT_MODULES = {"__init__.py", "cli.py", "errors.py"}


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


def _folders() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def test_the_root_keeps_only_entry_points() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} == ROOT_MODULES


def test_every_folder_has_a_floor() -> None:
    assert set(_folders()) <= set(FLOOR), f"give these folders a floor in FLOOR: {set(_folders()) - set(FLOOR)}"
    for folder in _folders():  # no nested packages: a room is one flat folder
        assert not [p for p in (PACKAGE / folder).iterdir() if p.is_dir() and p.name != "__pycache__"], folder


@pytest.mark.parametrize("where", [*_folders(), *(m[:-3] for m in sorted(ROOT_MODULES))])
def test_imports_point_down(where) -> None:
    files = _files(where) if (PACKAGE / where).is_dir() else [PACKAGE / f"{where}.py"]
    assert files
    for path in files:
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "genlip_lit" or len(parts) == 1 or parts[1] == where:
                continue
            assert FLOOR[parts[1]] < FLOOR[where], (
                f"{where}/{path.name} imports {name}: floor {FLOOR[parts[1]]} is not below {FLOOR[where]}")


def test_models_see_data_only_through_the_batch_type() -> None:  # plain torch
    for path in _files("models"):
        data = {n for n in _imports(path) if n.startswith("genlip_lit.data")}
        assert data <= {"genlip_lit.data.batch"}, path.name
        assert not {n.split(".")[0] for n in _imports(path)} & {"lightning", "pytorch_lightning"}, path.name


def test_the_evaluation_library_has_no_argparse_and_no_lightning() -> None:
    for path in _files("eval"):
        imported = {n.split(".")[0] for n in _imports(path)}
        assert not imported & {"argparse", "lightning", "pytorch_lightning", "jsonargparse"}, path.name
