"""`genlip import` as a command: format detection, and `fit` continuing from an imported checkpoint."""

from __future__ import annotations

import glob
import json
import os
import re

import pytest
import torch
from helpers import REPO, one_line_refusal, tiny_fit_args
from toy_tokenizers import FIXTURES, write_toy_tokenizer

from genlip_lit.cli import main
from genlip_lit.commands.import_checkpoint import import_checkpoint
from genlip_lit.errors import GenLIPUserError


def test_format_is_detected_orone_line_refusal(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(GenLIPUserError, match="neither an official GenLIP config .* pass --format"):
        import_checkpoint(str(src), str(tmp_path / "out"))
    with pytest.raises(GenLIPUserError, match="has no config.json"):
        import_checkpoint(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(GenLIPUserError, match="does not exist"):
        import_checkpoint(str(tmp_path / "nope"), str(tmp_path / "out"))


@pytest.mark.slow
def test_fit_continues_from_an_import(tmp_path):
    """The import's model.yaml composes after a run config: `fit` starts from the imported weights (init_from),
    with the imported architecture, tokenizer and text template."""
    toy = write_toy_tokenizer("official", str(tmp_path / "toy.json"))
    imported = import_checkpoint(os.path.join(FIXTURES, "official", "tiny_textproj"), str(tmp_path / "imp"),
                                 tokenizer=toy)
    os.chdir(REPO)
    args = [a for a in tiny_fit_args(tmp_path, max_steps=2) if not a.startswith("--model.init_args.arch_overrides")]
    args[3:3] = ["--config", str(tmp_path / "imp" / "model.yaml")]
    assert main(args) == 0
    (last,) = glob.glob(f"{tmp_path}/runs/*/version_*/checkpoints/last.ckpt")
    fitted = torch.load(last, map_location="cpu", weights_only=False)
    start = torch.load(imported.path, map_location="cpu", weights_only=True)
    assert fitted["global_step"] == 2 and fitted["hyper_parameters"]["text_template"] == "official"
    moved = max((fitted["state_dict"][k] - v).abs().max().item() for k, v in start["state_dict"].items())
    assert 0 < moved < 0.05  # two steps away from the import, not from a fresh init


def _official_src(tmp_path, name="src"):
    """A copy of the tiny official fixture with its tokenizer: a directory the test may edit."""
    src = tmp_path / name
    src.mkdir()
    for file in ("config.json", "model.safetensors"):
        (src / file).write_bytes(open(os.path.join(FIXTURES, "official", "tiny", file), "rb").read())
    write_toy_tokenizer("official", str(src / "tokenizer.json"))
    return src


def test_hostile_sources_are_refused_before_any_weight_is_read_and_leave_no_output(tmp_path, capsys, monkeypatch):
    from genlip_lit.convert import common

    src = _official_src(tmp_path)
    out = tmp_path / "out"
    config = json.loads((src / "config.json").read_text())

    def never(*args, **kwargs):
        raise AssertionError("the weights were read before the refusal")

    monkeypatch.setattr(common, "load_state", never)
    cases = {  # config change -> the refusal
        "num_hidden_layers 100000": ({"num_hidden_layers": 100000}, "depth 100000 is beyond any GenLIP model"),
        "num_hidden_layers 3": ({"num_hidden_layers": 3}, "describes 3 layers, the weights in .* hold 2"),
        "hidden_size 128": ({"hidden_size": 128}, "has shape \\[.*\\], the architecture needs"),
        "vocab_size 10**9": ({"vocab_size": 10**9}, "vocab_size 1000000000 is beyond"),
    }
    for name, (change, expected) in cases.items():
        (src / "config.json").write_text(json.dumps({**config, **change}))
        line = one_line_refusal(["import", str(src), "--output", str(out)], capsys)
        assert re.search(expected, line), (name, line)
        assert not out.exists(), name
    (src / "config.json").write_text(json.dumps(config))
    # size caps, from stat before a byte is read: a 2 GB (sparse) tokenizer, a config over --max-bytes
    with open(src / "tokenizer.json", "r+b") as fh:
        fh.truncate(2 * 10**9)
    line = one_line_refusal(["import", str(src), "--output", str(out)], capsys)
    assert "tokenizer.json has 2000000000 bytes, over the 67108864-byte cap" in line and "--max-bytes" in line
    write_toy_tokenizer("official", str(src / "tokenizer.json"))
    line = one_line_refusal(["import", str(src), "--output", str(out), "--max-bytes", "100"], capsys)
    assert "config.json has" in line and "over the 100-byte cap" in line
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["src"]  # no staging directory left either


def test_shards_must_stay_inside_the_source_directory(tmp_path, capsys):
    src = _official_src(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.replace(src / "model.safetensors", outside / "model.safetensors")
    from safetensors import safe_open

    with safe_open(str(outside / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    (src / "link.safetensors").symlink_to(outside / "model.safetensors")
    out = tmp_path / "out"
    for shard, expected in (("../elsewhere/model.safetensors", "no absolute path, no '..'"),
                            (str(outside / "model.safetensors"), "no absolute path, no '..'"),
                            ("link.safetensors", "leads to .*elsewhere/model.safetensors, outside")):
        (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in keys}}))
        line = one_line_refusal(["import", str(src), "--output", str(out)], capsys)
        assert re.search(expected, line) and "model.safetensors.index.json" in line, line
        assert not out.exists()


def test_an_import_never_replaces_files_it_did_not_write(tmp_path, capsys):
    src = _official_src(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "genlip.ckpt").write_text("mine")
    line = one_line_refusal(["import", str(src), "--output", str(out)], capsys)
    assert "the directory is not empty (genlip.ckpt)" in line and "--overwrite" in line
    assert (out / "genlip.ckpt").read_text() == "mine"
    assert main(["import", str(src), "--output", str(out), "--overwrite"]) == 0
    assert main(["import", str(src), "--output", str(out)]) == 0  # its own output: rewritten without asking
    first = (out / "genlip.ckpt").read_bytes()
    assert oct(os.stat(out / "genlip.ckpt").st_mode & 0o777) == oct(0o666 & ~_umask())
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o777 & ~_umask())
    ckpt = torch.load(out / "genlip.ckpt", weights_only=True)  # paths inside name the final directory
    assert ckpt["genlip_tokenizer"]["init_args"]["path"] == str(out / "tokenizer.json")
    assert f"init_from: {out / 'genlip.ckpt'}" in (out / "model.yaml").read_text()
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    one_line_refusal(["import", str(src), "--output", str(out)], capsys)
    assert (out / "genlip.ckpt").read_bytes() == first  # a refused import leaves the earlier one whole
    (tmp_path / "file").write_text("x")
    line = one_line_refusal(["import", str(src), "--output", str(tmp_path / "file")], capsys)
    assert "is a file, not a directory" in line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
