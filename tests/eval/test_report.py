"""`genlip eval` (report.json + report.md) and `genlip probe` on a real ImageFolder (scikit-learn's digits), with the
raw-pixel and random-init baseline rows beside the encoder."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from genlip_lit.cli import main
from genlip_lit.errors import GenLIPUserError

EVALUATIONS = ["LinearProbe", "PatchReadout", "CaptionSamples", "ZeroShot", "AttentionSink"]


@pytest.fixture(scope="module")
def checkpoint(quickstart_run) -> str:
    os.chdir(REPO)  # the evaluations' default data (the quickstart's synthetic scenes) is named from the repository
    return quickstart_run  # this module's copy of a 2-step quickstart run (tests/conftest.py)


def test_genlip_eval_writes_both_reports(checkpoint, tmp_path, capsys) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text("evaluations:\n" + "".join(
        f"  - {{class_path: {name}, init_args: {{budget: 16, batch_size: 16}}}}\n" for name in EVALUATIONS))
    out = tmp_path / "report"
    assert main(["eval", "--ckpt", checkpoint, "--config", str(config), "--output", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["evaluations"]) == {"probe", "readout", "captions", "zero_shot", "sink"}
    # which checkpoint it scored: the model card of `genlip export` matches reports by the weights digest
    assert report["checkpoint"]["path"] == os.path.abspath(checkpoint) and report["checkpoint"]["global_step"] == 2
    assert len(report["checkpoint"]["weights_sha256"]) == 64
    scalars = report["evaluations"]["zero_shot"]["scalars"]
    assert 0 <= scalars["zero_shot/top1"] <= 1 and scalars["zero_shot/seconds"] > 0
    md = (out / "report.md").read_text()
    assert "## PatchReadout" in md and "![readout/top_word_per_patch](readout_top_word_per_patch.png)" in md
    assert "| captions/cider |" in md and "**captions/samples**" in md
    assert (out / "readout_top_word_per_patch.png").exists() and (out / "sink_per_layer.png").exists()
    # every evaluation names its held-out count; under 50 images the report and the output say it is rough
    counts = {name: entry["details"]["num_images"] for name, entry in report["evaluations"].items()}
    assert counts == {"probe": 32, "readout": 16, "captions": 16, "zero_shot": 16, "sink": 16}
    rough = "on 16 held-out images only: fewer than 50, a rough figure"
    assert report["evaluations"]["captions"]["held_out"].startswith(rough)
    assert f"Scored {rough}" in md
    printed = capsys.readouterr().out
    assert f"captions: {rough}" in printed and "wrote" in printed
    # the default output sits beside the checkpoint
    assert main(["eval", "--ckpt", checkpoint, "--config", str(config), "--device", "cpu"]) == 0
    assert os.path.exists(os.path.join(os.path.dirname(checkpoint), "eval", "report.md"))


def test_held_out_note_flags_fewer_than_50_images() -> None:
    from genlip_lit.eval.result import held_out_note

    assert held_out_note({"num_images": 120}) == "on 120 held-out images"
    assert held_out_note({"num_images": 1}).startswith("on 1 held-out image only: fewer than 50, a rough figure")
    assert held_out_note({"num_images": 3, "skipped": "no labels"}) is None and held_out_note({}) is None


def test_eval_config_errors_are_named(checkpoint, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluations:\n  - {class_path: genlip_lit.callbacks.ResumableCheckpoint}\n")
    with pytest.raises(SystemExit):
        main(["eval", "--ckpt", checkpoint, "--config", str(bad)])
    assert "not an evaluation callback" in capsys.readouterr().err
    bad.write_text("evaluation: []\n")
    with pytest.raises(SystemExit):
        main(["eval", "--ckpt", checkpoint, "--config", str(bad)])
    # the command's parser names the unknown key, its file and the closest key
    assert f"{bad}: evaluation: not an option; did you mean 'evaluations'?" in capsys.readouterr().err
    bad.write_text("evaluations: []\n")
    with pytest.raises(SystemExit):
        main(["eval", "--ckpt", checkpoint, "--config", str(bad)])
    assert "no evaluations" in capsys.readouterr().err


def test_every_shipped_eval_config_names_real_evaluations() -> None:
    import yaml

    from genlip_lit.commands.eval import build_evaluations

    for name, expected in (("eval.yaml", EVALUATIONS), ("eval_transfer.yaml", ["TransferProbe"])):
        with open(os.path.join(REPO, "experiments", name), encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
        assert [type(e).__name__ for e in build_evaluations(config["evaluations"])] == expected, name


def test_probe_command_on_scikit_learn_digits(checkpoint, tmp_path, capsys) -> None:
    """A real labelled set that is not the embedded data: 8x8 handwritten digits written as PNG class folders.
    The report carries the encoder and two baselines on the same images: raw pixels and a random-init twin."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    root = tmp_path / "digits"
    for i, (image, label) in enumerate(zip(digits.images[:600], digits.target[:600])):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    out = tmp_path / "probe"
    assert main(["probe", "--ckpt", checkpoint, "--data", str(root), "--budget", "400", "--test-budget", "120",
                 "--attentive-epochs", "5", "--device", "cpu", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert list(rows)[1:5] == ["encoder", "random init", "raw pixels (patch-grid means)", "majority class (digit_0)"]
    assert list(rows)[5] == "uniform chance (1/10)" and "| uniform chance (1/10) | 10.0% | 10.0% |" in printed
    assert (f"probe settings: 400 train / 120 test images of {root} (its val/ folder or a seeded 20% held-out split "
            "(seed 0)); attentive probe 5 epochs, seed 0; random init seed 0") in printed
    details = json.loads((out / "probe.json").read_text())
    assert details["num_classes"] == 10 and details["class_names"][:2] == ["digit_0", "digit_1"]
    for key in ("linear", "attentive", "pixels_linear", "random_init_linear", "random_init_attentive"):
        assert details[key]["num_train"] == 400 and details[key]["num_test"] == 120, key
    # even a 2-step model's frozen features separate handwritten digits far above chance; so do raw pixels
    assert details["linear"]["top1"] > 0.3 and details["pixels_linear"]["top1"] > 0.8
    assert re.search(r"\| encoder \| [0-9.]+% \| [0-9.]+% \|", printed)
    csv_rows = (out / "probe.csv").read_text().splitlines()
    assert csv_rows[0] == "features,linear probe top-1,attentive probe top-1" and len(csv_rows) == 6


def test_torch_threads_sets_and_restores() -> None:
    import torch

    from genlip_lit.commands.common import device as resolve_device
    from genlip_lit.commands.common import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0 leaves torch's choice alone
        assert torch.get_num_threads() == before
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(GenLIPUserError, match="--device 'gpu'"):
        resolve_device("gpu")


def test_eval_data_block_as_in_a_fit_config_and_a_grid_mismatch_is_a_named_skip(checkpoint, tmp_path) -> None:
    """A `data:` block copied from a fit config (class_path + init_args) is read as its init_args; label maps made
    for another patch size skip the readout with the reason instead of failing the report."""
    config = tmp_path / "eval.yaml"
    config.write_text(
        "evaluations:\n  - {class_path: PatchReadout, init_args: {budget: 8, batch_size: 8}}\n"
        "data:\n  class_path: genlip_lit.data.datamodule.GenLIPDataModule\n  init_args:\n"
        f"    synthetic: {{num_train: 16, num_val: 16, image_size: 32, patch_size: 16}}\n"
        f"    image_size: 32\n    batch_size: 8\n    cache_dir: {tmp_path / 'cache'}\n")
    out = tmp_path / "report"
    assert main(["eval", "--ckpt", checkpoint, "--config", str(config), "--output", str(out), "--device", "cpu"]) == 0
    readout = json.loads((out / "report.json").read_text())["evaluations"]["readout"]
    assert "label maps are 2x2 but the model makes 16 patches" in json.dumps(readout)
