"""`genlip import` names the [hf] extra at once when the `tokenizers` package is missing (issue 24)."""

from __future__ import annotations

import sys

import pytest

from genlip_lit.cli import main


def test_import_names_the_hf_extra_when_tokenizers_is_missing(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` raises ImportError
    with pytest.raises(SystemExit) as info:
        main(["import", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")])
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("genlip: error")]
    assert err == ["genlip: error: genlip import needs the `tokenizers` package (the [hf] extra): "
                   "pip install 'genlip_lit[hf]'"]
    assert not (tmp_path / "out").exists()
