"""`genlip eval` (report.json + report.md) and `genlip probe` on a real ImageFolder (scikit-learn's digits)."""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pytest
from helpers import tiny_fit_args
from PIL import Image

from genlip_lit.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVALUATIONS = ["LinearProbe", "PatchReadout", "CaptionSamples", "ZeroShot", "AttentionSink"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("reportfit")
    os.chdir(REPO)
    assert main(tiny_fit_args(tmp, max_steps=2)) == 0
    (last,) = glob.glob(f"{tmp}/runs/quickstart/version_*/checkpoints/last.ckpt")
    return last


def test_genlip_eval_writes_both_reports(checkpoint, tmp_path, capsys) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text("evaluations:\n" + "".join(
        f"  - {{class_path: {name}, init_args: {{budget: 16, batch_size: 16}}}}\n" for name in EVALUATIONS))
    out = tmp_path / "report"
    assert main(["eval", "--ckpt", checkpoint, "--config", str(config), "--output", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["evaluations"]) == {"probe", "readout", "captions", "zero_shot", "sink"}
    scalars = report["evaluations"]["zero_shot"]["scalars"]
    assert 0 <= scalars["zero_shot/top1"] <= 1 and scalars["zero_shot/seconds"] > 0
    md = (out / "report.md").read_text()
    assert "## PatchReadout" in md and "![readout/top_word_per_patch](readout_top_word_per_patch.png)" in md
    assert "| captions/cider |" in md and "**captions/samples**" in md
    assert (out / "readout_top_word_per_patch.png").exists() and (out / "sink_per_layer.png").exists()
    assert "wrote" in capsys.readouterr().out
    # the default output sits beside the checkpoint
    assert main(["eval", "--ckpt", checkpoint, "--config", str(config), "--device", "cpu"]) == 0
    assert os.path.exists(os.path.join(os.path.dirname(checkpoint), "eval", "report.md"))


def test_eval_config_errors_are_named(checkpoint, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluations:\n  - {class_path: genlip_lit.callbacks.ResumableCheckpoint}\n")
    with pytest.raises(SystemExit):
        main(["eval", "--ckpt", checkpoint, "--config", str(bad)])
    assert "not an evaluation callback" in capsys.readouterr().err
    bad.write_text("evaluation: []\n")
    with pytest.raises(SystemExit):
        main(["eval", "--ckpt", checkpoint, "--config", str(bad)])
    assert "unknown key(s) ['evaluation']" in capsys.readouterr().err


def test_every_shipped_eval_config_names_real_evaluations() -> None:
    import yaml

    from genlip_lit.eval.report import build_evaluations

    with open(os.path.join(REPO, "experiments", "eval.yaml"), encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    assert [type(e).__name__ for e in build_evaluations(config["evaluations"])] == EVALUATIONS


def test_probe_command_on_scikit_learn_digits(checkpoint, tmp_path, capsys) -> None:
    """A real labelled set that is not the embedded data: 8x8 handwritten digits written as PNG class folders."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    root = tmp_path / "digits"
    for i, (image, label) in enumerate(zip(digits.images[:600], digits.target[:600])):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    out = tmp_path / "probe.json"
    assert main(["probe", "--ckpt", checkpoint, "--data", str(root), "--budget", "400", "--test-budget", "120",
                 "--device", "cpu", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["linear", "attentive"]
    for line in lines:
        top1 = float(re.search(r"top-1 ([0-9.]+)", line).group(1))
        assert 0.0 <= top1 <= 1.0 and "10 classes" in line and "400 train / 120 test" in line
    details = json.loads(out.read_text())
    assert details["linear"]["num_classes"] == 10
    # even a 2-step model's frozen features separate handwritten digits far above chance
    assert details["linear"]["top1"] > 0.3


def test_torch_threads_sets_and_restores() -> None:
    import torch

    from genlip_lit.eval.report import resolve_device, torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0 leaves torch's choice alone
        assert torch.get_num_threads() == before
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
