"""Evaluation callbacks in a real (tiny) fit: TensorBoard figures, checkpointed history, `genlip eval` reports."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from helpers import tiny_fit_args

from genlip_lit.callbacks.evaluation import EvalCallback
from genlip_lit.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALLBACKS = ["LinearProbe", "PatchReadout", "CaptionSamples", "ZeroShot", "AttentionSink"]


def _callback_args(every: int) -> list[str]:
    args = []
    for name in CALLBACKS:
        args += [f"--trainer.callbacks+=genlip_lit.callbacks.{name}", f"--trainer.callbacks.every_n_steps={every}",
                 "--trainer.callbacks.budget=32"]
    return args + ["--trainer.callbacks.batch_size=16"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalfit")
    os.chdir(REPO)
    assert main(tiny_fit_args(tmp, max_steps=4, extra=_callback_args(every=2))) == 0
    return tmp


def _tags(tmp) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(f"{tmp}/runs/quickstart/version_0/events.out.tfevents.*")
    acc = EventAccumulator(events, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc.Tags() | {"_scalar_steps": {t: [s.step for s in acc.Scalars(t)] for t in acc.Tags()["scalars"]}}


def test_every_callback_logs_its_figures(fitted) -> None:
    tags = _tags(fitted)
    scalars = set(tags["scalars"])
    for tag in ("probe/linear_top1", "probe/attentive_top1", "readout/accuracy", "readout/chance_uniform",
                "readout/chance_permuted", "captions/cider", "captions/bleu4", "zero_shot/top1",
                "sink/vision_to_first_mean", "sink/text_to_first_mean", "sink/text_to_vision_mean",
                "sink/vision_to_first/layer00", "sink/text_to_vision/layer01"):
        assert tag in scalars, tag
        assert tags["_scalar_steps"][tag] == [2, 4]  # every 2 steps; the fit-end run is not repeated at step 4
    assert {"readout/top_word_per_patch", "sink/per_layer"} <= set(tags["images"])
    assert any("captions/samples" in t for t in tags["tensors"])  # add_text is stored as a tensor summary


def test_history_is_kept_in_checkpoints(fitted) -> None:
    (last,) = glob.glob(f"{fitted}/runs/quickstart/version_0/checkpoints/last.ckpt")
    states = torch.load(last, weights_only=True)["callbacks"]
    assert "LinearProbe{'every_n_steps': 2, 'budget': 32, 'image_folder': None}" in states
    probe = next(v for k, v in states.items() if k.startswith("LinearProbe"))
    assert [h["step"] for h in probe["history"]] == [2, 4] and 0.0 <= probe["history"][0]["probe/linear_top1"] <= 1
    cb = EvalCallback()
    cb.load_state_dict(probe)
    assert cb.history == probe["history"] and cb.state_dict()["last_step"] == 4
