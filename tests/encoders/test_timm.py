"""`genlip export` writes a timm form: `timm.create_model('local-dir:DIR/timm', pretrained=True)` computes the same
patch features as `genlip_lit.load_vision_encoder(DIR)`; ablations timm cannot express get no timm form."""

from __future__ import annotations

import json
import os

import pytest
import timm
import torch
from helpers import tiny_objective, write_checkpoint

import genlip_lit
from genlip_lit.cli import main
from genlip_lit.encoders.export import export_vision_encoder
from genlip_lit.encoders.timm import timm_incompatibility, timm_model_args
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIPConfig


def _checkpoint(tmp_path, **overrides) -> str:
    module = tiny_objective("genlip", overrides, seed=0)  # the preset "tiny" (4 blocks of width 128) and overrides
    with torch.no_grad():  # move every parameter off its init (LayerScale 0.1, zero biases) so all of them count
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return write_checkpoint(module, tmp_path / "m.ckpt")


@pytest.mark.parametrize("overrides", [{}, {"num_registers": 2, "text_width": 64, "ffn_bias": False}])
def test_timm_model_equals_the_exported_encoder(tmp_path, overrides, capsys):
    ckpt = _checkpoint(tmp_path, **overrides)
    out = tmp_path / "enc"
    assert main(["export", "--ckpt", ckpt, "--output", str(out)]) == 0
    assert f"timm form: {out}/timm" in capsys.readouterr().out
    encoder = genlip_lit.load_vision_encoder(str(out))
    model = timm.create_model(f"local-dir:{out}/timm", pretrained=True).eval()
    assert model.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]
    registers = encoder.config.num_registers
    for h, w in ((64, 64), (48, 96)):  # the preset's training size and a wider, non-square grid
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            ours, theirs = encoder(x), model.forward_features(x)[:, registers:]
        assert ours.shape == theirs.shape == (2, (h // 8) * (w // 8), 128)
        assert (ours - theirs).abs().max() <= 1e-5
    card = (out / "README.md").read_text()
    assert "timm.create_model(\"local-dir:THIS_DIR/timm\", pretrained=True)" in card and "| layers | 4 |" in card


def test_ablations_timm_cannot_express_get_no_timm_form(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, pos_embed="learned")
    out = tmp_path / "enc"
    assert main(["export", "--ckpt", ckpt, "--output", str(out)]) == 0
    assert "no timm form: not expressible: learned absolute positions" in capsys.readouterr().out
    assert not (out / "timm").exists()
    assert json.loads((out / "config.json").read_text())["timm"]["directory"] is None
    assert "No timm form" in (out / "README.md").read_text()
    for overrides, reason in (({"attn_mode": "causal"}, "causal"), ({"mrope_layout": "contiguous"}, "contiguous"),
                              ({"head_dim": 16}, "head dim 16"), ({"norm_eps": 1e-5}, "eps")):
        cfg = GenLIPConfig.from_name("tiny", **overrides)
        assert reason in timm_incompatibility(cfg)
        with pytest.raises(GenLIPUserError, match="timm cannot express"):
            timm_model_args(cfg)


def test_model_card_carries_the_last_evaluation_figures(tmp_path):
    ckpt = _checkpoint(tmp_path)
    raw = torch.load(ckpt, weights_only=True)
    raw["callbacks"] = {"LinearProbe{'every_n_steps': 100}": {"history": [
        {"step": 50, "probe/linear_top1": 0.25}, {"step": 100, "probe/linear_top1": 0.5, "probe/seconds": 3.0}]}}
    torch.save(raw, ckpt)
    out = tmp_path / "enc"
    export_vision_encoder(ckpt, str(out))
    card = (out / "README.md").read_text()
    assert "| probe/linear_top1 | 0.5000 |" in card and "seconds" not in card and "step 0" in card
    assert os.path.isfile(out / "timm" / "model.safetensors")
