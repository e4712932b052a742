"""`genlip import` as a command: format detection, and `fit` continuing from an imported checkpoint."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from helpers import tiny_fit_args
from toy_tokenizers import FIXTURES, write_toy_tokenizer

from genlip_lit.cli import main
from genlip_lit.commands.import_checkpoint import import_checkpoint
from genlip_lit.errors import GenLIPUserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_format_is_detected_or_refused(tmp_path):
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
