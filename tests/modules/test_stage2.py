"""Stage 2 end to end: the stage-2 config continues a stage-1 run from its weights, on packed native data."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from helpers import REPO, TINY_ARCH, tiny_objective

from genlip_lit.checkpoints.loading import load_initial_weights, resolve_checkpoint
from genlip_lit.cli import main
from genlip_lit.errors import GenLIPUserError

TINY = "{depth: 2, width: 64, ffn_hidden: 128}"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def stage1(quickstart_run_4) -> str:
    """runs/quickstart of this module's copy of a 4-step quickstart run (tests/conftest.py)."""
    return os.path.join(quickstart_run_4[0], "runs", "quickstart")


def _stage2_args(tmp, init_from: str, max_steps: int = 4) -> list[str]:
    return [
        "fit",
        "--config", "experiments/stage2_quickstart.yaml",
        f"--model.init_args.init_from={init_from}",
        f"--model.init_args.arch_overrides={TINY}",
        f"--trainer.max_steps={max_steps}",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp}/runs",
        f"--trainer.default_root_dir={tmp}",
        "--trainer.callbacks=[]",
        "--checkpoint.every_n_train_steps=2",
        "--data.init_args.synthetic={num_train: 48, num_val: 16, image_size: 32, max_image_size: 64, "
        "word_font_px: 8, word_prob: 1.0}",
        f"--data.init_args.cache_dir={tmp}/cache",
        "--data.init_args.image_size=32",
        "--data.init_args.min_patches=4",
        "--data.init_args.max_patches=64",
        "--data.init_args.max_tokens=160",
        "--data.init_args.num_workers=0",
    ]


@pytest.mark.slow
def test_stage2_config_continues_from_stage1_weights(stage1, tmp_path):
    stage1_ckpt = resolve_checkpoint(stage1)
    assert stage1_ckpt.endswith("last.ckpt")
    assert main(_stage2_args(tmp_path, stage1)) == 0
    (last,) = glob.glob(f"{tmp_path}/runs/stage2_quickstart/version_*/checkpoints/last.ckpt")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    # a new stage: its own step count, schedule and hyper-parameters (not resumed from stage 1)
    assert ckpt["global_step"] == 4
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 4
    assert ckpt["hyper_parameters"]["lr"] == pytest.approx(1e-4)
    assert ckpt["datamodule_hyper_parameters"]["resolution"] == "native"
    # the weights moved away from stage 1 (it trained) ...
    before = torch.load(stage1_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(before["model.patch_embed.weight"], ckpt["state_dict"]["model.patch_embed.weight"])
    # ... from exactly stage 1's weights
    module = tiny_objective("genlip", max_text_len=48, init_from=stage1)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    # packing was measured and logged
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(f"{tmp_path}/runs/stage2_quickstart/version_*")
    acc = EventAccumulator(events)
    acc.Reload()
    efficiency = [e.value for e in acc.Scalars("data/packing_efficiency")]
    unpacked = [e.value for e in acc.Scalars("data/unpacked_efficiency")]
    assert len(efficiency) == 4 and all(0.5 < e <= 1.0 for e in efficiency)
    assert sum(efficiency) > sum(unpacked)
    assert "val/loss" in acc.Tags()["scalars"]
    # a stage-2 checkpoint rebuilds without its stage-1 file (genlip caption / eval / export)
    from genlip_lit.checkpoints.loading import load_checkpoint

    os.rename(stage1_ckpt, stage1_ckpt + ".moved")
    try:
        rebuilt, data_hparams = load_checkpoint(last)
    finally:
        os.rename(stage1_ckpt + ".moved", stage1_ckpt)
    assert rebuilt.init_source is None and data_hparams["max_tokens"] == 160


def test_init_from_errors_name_the_problem(stage1, tmp_path, monkeypatch):
    with pytest.raises(GenLIPUserError, match="no last.ckpt under"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(GenLIPUserError, match="checkpoint not found"):
        resolve_checkpoint(str(tmp_path / "nope.ckpt"))
    with pytest.raises(GenLIPUserError, match="does not fit this model.*shape differs"):
        tiny_objective("genlip", {**TINY_ARCH, "width": 96}, init_from=stage1)
    with pytest.raises(GenLIPUserError, match="does not fit this model.*missing"):
        tiny_objective("genlip", {**TINY_ARCH, "depth": 3}, init_from=stage1)
    module = tiny_objective("genlip")
    other = {**module.tokenizer.state_dict(), "compact_base_ids": [0, 1, 2]}  # same size, other tokens
    monkeypatch.setattr(module.tokenizer, "state_dict", lambda: other)
    with pytest.raises(GenLIPUserError, match="another tokenizer vocabulary"):
        load_initial_weights(module, stage1)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(GenLIPUserError, match="not a readable checkpoint"):
        load_initial_weights(module, str(bad))
