"""A wrong data_dir is named as data_dir, before the model or a compact vocabulary is built (issue 24: it was
blamed on `compact_corpus` after ~10 s)."""

from __future__ import annotations

import os

import pytest
from helpers import REPO

from genlip_lit.cli import main


def _fit(capsys, data_dir: str) -> str:
    os.chdir(REPO)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "experiments/corpus_cpu.yaml", f"--data.init_args.data_dir={data_dir}",
              "--trainer.max_steps=1"])
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("genlip: error")]
    return "\n".join(errors)


@pytest.mark.parametrize("kind", ["missing", "empty", "images"])
def test_fit_names_a_bad_data_dir_as_data_dir(tmp_path, capsys, monkeypatch, kind) -> None:
    target = tmp_path / "corpus"
    if kind != "missing":
        target.mkdir()
    if kind == "images":  # a folder of images given where the optimized shards belong
        (target / "a.png").write_bytes(b"x")
    built = []
    import functools

    from genlip_lit.modules.genlip import GenLIPModule

    original = GenLIPModule.__init__

    @functools.wraps(original)  # the same signature for the CLI's parser; records that the model was built
    def recording_init(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(GenLIPModule, "__init__", recording_init)
    error = _fit(capsys, str(target))
    what = "does not exist" if kind == "missing" else "has no train/ litdata shards"
    assert error == (f"genlip: error: data_dir {str(target)!r} {what}; create it with `genlip optimize --input SRC "
                     f"--output {target}` (or `--source synthetic --num-samples N` for the embedded data)")
    assert "compact_corpus" not in error and not built
