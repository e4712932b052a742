"""ContrastiveModule: GenLIP's image tower under CLIP/SigLIP losses, DDP loss exchange, the encoder contract."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, TESTS, tiny_fit_args

from genlip_lit.checkpoints.loading import load_checkpoint
from genlip_lit.cli import main
from genlip_lit.data.tokenizer import OpenCLIPTokenizer
from genlip_lit.errors import GenLIPUserError
from genlip_lit.modules import ContrastiveModule, GenLIPModule
from genlip_lit.modules.contrastive import contrastive_loss


@pytest.mark.parametrize("arch", ["tiny", "s16"])
def test_image_tower_matches_genlip_exactly(arch) -> None:
    tok = OpenCLIPTokenizer(compact_corpus="synthetic")
    clip = ContrastiveModule(arch=arch, loss="clip", tokenizer=tok)
    genlip = GenLIPModule(arch=arch, tokenizer=tok)
    assert clip.visual.num_params(include_text=False) == genlip.model.num_params(include_text=False)
    assert [n for n, _ in clip.visual.named_parameters()] == [
        n for n, _ in genlip.model.named_parameters() if not n.startswith(("tok_embed", "lm_head", "pos_text"))]


def test_losses_and_learnable_temperature() -> None:
    tok = OpenCLIPTokenizer(compact_corpus="synthetic")
    clip = ContrastiveModule(arch="tiny", loss="clip", tokenizer=tok, arch_overrides={"depth": 1})
    siglip = ContrastiveModule(arch="tiny", loss="siglip", tokenizer=tok, arch_overrides={"depth": 1})
    assert torch.isclose(clip.logit_scale.exp(), torch.tensor(1 / 0.07)) and clip.logit_bias is None
    assert torch.isclose(siglip.logit_scale.exp(), torch.tensor(10.0)) and float(siglip.logit_bias) == -10.0
    emb = F.normalize(torch.randn(6, 8), dim=-1)
    # perfectly matched pairs beat shuffled ones under both objectives
    for m in (clip, siglip):
        assert m.compute_loss(emb, emb) < m.compute_loss(emb, emb.roll(1, 0))
    px = torch.randn(2, 3, 32, 32)
    assert clip.text_match_scores(px, ["a red circle", "a star", "x"]).shape == (2, 3)
    assert clip.patch_word_scores(px, ["red", "circle"]).shape == (2, 16, 2)
    maps, num_prefix = clip.attention_maps(px)
    assert len(maps) == 1 and num_prefix == 16 and maps[0].shape[-1] == 16
    with pytest.raises(GenLIPUserError, match="model.loss must be one of"):
        ContrastiveModule(loss="triplet")


def test_ddp_loss_equals_single_process_loss(tmp_path) -> None:
    out = tmp_path / "loss.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(TESTS, "ddp_loss_worker.py"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads(out.read_text())
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    texts = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    single_clip = contrastive_loss("clip")(images, texts, torch.tensor(10.0))
    single_siglip = contrastive_loss("siglip")(images, texts, torch.tensor(10.0), torch.tensor(-5.0))
    assert ddp["clip"] == pytest.approx(float(single_clip), abs=1e-5)
    assert ddp["siglip"] == pytest.approx(float(single_siglip), abs=1e-5)


def test_siglip_trains_under_the_same_harness_and_callbacks(tmp_path) -> None:
    os.chdir(REPO)
    extra = ["--config", "experiments/compare/siglip.yaml",
             "--model.init_args.arch_overrides={depth: 2, width: 64, ffn_hidden: 128}",
             "--trainer.callbacks+=genlip_lit.callbacks.ZeroShot", "--trainer.callbacks.budget=16",
             "--trainer.callbacks.every_n_steps=3",
             "--trainer.callbacks+=genlip_lit.callbacks.PatchReadout", "--trainer.callbacks.budget=16",
             "--trainer.callbacks+=genlip_lit.callbacks.LinearProbe", "--trainer.callbacks.budget=32"]
    args = tiny_fit_args(tmp_path, max_steps=3)
    # the base config comes first, the comparison config overrides the model, then the test's shrinking
    args = args[:3] + extra[:2] + args[3:] + extra[2:]
    assert main(args) == 0
    (last,) = glob.glob(f"{tmp_path}/runs/*/version_*/checkpoints/last.ckpt")
    module, _ = load_checkpoint(last)
    assert type(module) is ContrastiveModule and module.loss_kind == "siglip"
    states = torch.load(last, weights_only=True)["callbacks"]
    zero_shot = next(v for k, v in states.items() if k.startswith("ZeroShot"))
    assert 0.0 <= zero_shot["history"][-1]["zero_shot/top1"] <= 1.0
