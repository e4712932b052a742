"""`genlip export` + `load_vision_encoder`: the exported encoder equals the checkpoint's, at two resolutions."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from helpers import REPO, tiny_fit_args

import genlip_lit
from genlip_lit.checkpoints.loading import load_checkpoint
from genlip_lit.cli import main
from genlip_lit.encoders.export import export_vision_encoder, load_vision_encoder
from genlip_lit.errors import GenLIPUserError


def _fit(tmp, overlay: str | None = None, overrides: str = "{depth: 2, width: 64, ffn_hidden: 128}") -> str:
    os.chdir(REPO)
    args = tiny_fit_args(tmp, max_steps=2)
    if overlay:
        args = args[:3] + ["--config", overlay] + args[3:]
    assert main([*args, f"--model.init_args.arch_overrides={overrides}"]) == 0
    (last,) = glob.glob(f"{tmp}/runs/*/version_*/checkpoints/last.ckpt")
    return last


@pytest.fixture(scope="module")
def genlip_ckpt(tmp_path_factory) -> str:
    return _fit(tmp_path_factory.mktemp("exportfit"), overrides="{depth: 2, width: 64, ffn_hidden: 128, "
                                                                "num_registers: 2}")


def test_round_trip_equals_the_checkpoint_at_two_resolutions(genlip_ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "encoder"
    assert main(["export", "--ckpt", genlip_ckpt, "--output", str(out)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    module, _ = load_checkpoint(genlip_ckpt)
    encoder = genlip_lit.load_vision_encoder(str(out))
    for size in (32, 48):  # the training size and a larger, non-square-friendly one (M-RoPE places any grid)
        x = torch.randn(2, 3, size, size + 16)
        with torch.no_grad():
            torch.testing.assert_close(encoder(x), module.encode_patches(x), rtol=0, atol=1e-6)
        assert encoder(x).shape == (2, (size // 8) * ((size + 16) // 8), 64)
    assert encoder.grid(32, 48) == (4, 6)
    config = json.loads((out / "config.json").read_text())
    assert config["preprocessing"] == {**config["preprocessing"], "patch_size": 8, "image_size": 32,
                                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert config["source"]["objective"] == "GenLIP" and config["architecture"]["num_registers"] == 2
    # no text parts travel with the encoder
    n_exported = sum(t.numel() for t in encoder.parameters())
    assert n_exported == module.num_vision_params() < sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("overlay", ["experiments/compare/siglip.yaml", "experiments/compare/captioner.yaml"])
def test_baseline_towers_export_the_same_way(overlay, tmp_path) -> None:
    ckpt = _fit(tmp_path / "fit", overlay)
    module, _ = load_checkpoint(ckpt)
    encoder = load_vision_encoder(export_vision_encoder(ckpt, str(tmp_path / "enc")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), module.encode_patches(x), rtol=0, atol=1e-6)


def test_wrong_directories_are_named(genlip_ckpt, tmp_path) -> None:
    with pytest.raises(GenLIPUserError, match="config.json missing"):
        load_vision_encoder(str(tmp_path))
    out = export_vision_encoder(genlip_ckpt, str(tmp_path / "enc"))
    config_path = os.path.join(out, "config.json")
    config = json.load(open(config_path))
    json.dump({**config, "format": "something_else"}, open(config_path, "w"))
    with pytest.raises(GenLIPUserError, match="not a genlip_vision_encoder"):
        load_vision_encoder(out)
    config["architecture"]["ffn_hidden"] = 96  # weights no longer fit the described architecture
    json.dump(config, open(config_path, "w"))
    with pytest.raises(GenLIPUserError, match="does not match"):
        load_vision_encoder(out)
    with pytest.raises(GenLIPUserError, match="checkpoint not found"):
        export_vision_encoder(str(tmp_path / "nope.ckpt"), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="divisible by the patch size 8"):
        load_vision_encoder(export_vision_encoder(genlip_ckpt, str(tmp_path / "ok")))(torch.randn(1, 3, 30, 32))
