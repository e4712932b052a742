"""`genlip probe-full` (studies/probe_module.py, studies/probe_data.py, commands/probe_full.py): the streamed probe
agrees with the in-memory one (`eval/probes.py`) on a small set, 2 gloo ranks agree with 1 process, and a run
killed with SIGKILL mid-epoch resumes to the same heads as a run never stopped."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from helpers import REPO
from PIL import Image

from genlip_lit.data.transforms import FixedResTransform
from genlip_lit.eval import probes
from genlip_lit.eval.labelled import ImageFolderSet
from genlip_lit.studies.probe_data import EpochSampler, ProbeDataModule, ProbeTransform
from genlip_lit.studies.probe_module import StreamedProbe

SIZE = 32
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """3 noisy colour classes, 20 images each (24-48 px, so resizing and cropping matter)."""
    root = tmp_path_factory.mktemp("probe_folder")
    rng = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(root / f"class{c}")
        for i in range(20):
            h, w = rng.integers(24, 48, 2)
            a = rng.integers(0, 120, (h, w, 3)).astype(np.uint8)
            a[..., c] += rng.integers(0, 100, dtype=np.uint8)  # overlapping classes: top-1 well below 100%
            Image.fromarray(a).save(root / f"class{c}" / f"{i}.png")
    return str(root)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    from helpers import tiny_objective, write_checkpoint

    module = tiny_objective("genlip", {"depth": 1, "width": 64, "num_heads": 2, "ffn_hidden": 128}, seed=0)
    return write_checkpoint(module, tmp_path_factory.mktemp("probe_encoder") / "encoder.ckpt")


def test_epoch_sampler_order_ranks_and_resume() -> None:
    one = EpochSampler(10, seed=3)
    g = torch.Generator().manual_seed(3)
    first, second = torch.randperm(10, generator=g).tolist(), torch.randperm(10, generator=g).tolist()
    one.set_epoch(1)
    assert [i for i, _ in one] == second  # the in-memory probe's order: one permutation per epoch, one generator
    ranks = [EpochSampler(10, 2, r, seed=3) for r in range(2)]
    for s in ranks:
        s.set_epoch(0)
    assert sorted(i for s in ranks for i, _ in s) == sorted(first)  # 2 ranks split one epoch, nothing twice
    assert [i for i, _ in ranks[1]] == first[1::2]
    ranks[0].resume_at(0, 3)
    assert [i for i, _ in ranks[0]] == first[0::2][3:]  # a resume skips what was trained, once
    assert [i for i, _ in ranks[0]] == first[0::2]
    odd = [EpochSampler(5, 2, r, shuffle=False, pad=False) for r in range(2)]
    assert [[i for i, _ in s] for s in odd] == [[0, 2, 4], [1, 3]]  # val: every image once over the ranks


def test_train_augmentation_is_seeded_per_sample_and_epoch(folder) -> None:
    from genlip_lit.data.transforms import Preprocessing
    from genlip_lit.studies.probe_data import LabelledImages

    data = LabelledImages(folder, "train", ProbeTransform(Preprocessing(SIZE), train=True))
    a, b, c = data[(4, 0)], data[(4, 0)], data[(4, 1)]
    assert a["pixels"].shape == (3, SIZE, SIZE) and torch.equal(a["pixels"], b["pixels"])
    assert not torch.equal(a["pixels"], c["pixels"])  # another epoch, another crop
    val = LabelledImages(folder, "val", ProbeTransform(Preprocessing(SIZE), train=False, crop_fraction=1.0))
    path, label = val.files[0]
    expected = FixedResTransform(SIZE)(Image.open(path))  # crop fraction 1: exactly the in-memory transform
    assert torch.equal(val[0]["pixels"], expected) and val[0]["label"] == label
    assert val[0]["key"] == os.path.relpath(path, folder)


def _streamed(encoder: str, folder: str, epochs: int, tmp_path, **model) -> StreamedProbe:
    module = StreamedProbe(encoder, attentive_lr=3e-3, attentive_weight_decay=0.05, linear_lr=1e-2,
                           warmup_epochs=1, seed=0, write_predictions=False, **model)
    data = ProbeDataModule(folder, batch_size=16, num_workers=0, augment="none", val_crop_fraction=1.0,
                           image_size=SIZE, seed=0)
    data.connect(module.preprocessing)
    module.connect(data.class_names, SIZE)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(module, data)
    return module


@pytest.mark.slow
def test_streamed_probe_equals_the_in_memory_attentive_probe(encoder, folder, tmp_path, monkeypatch) -> None:
    """Same seed, no augmentation, same AdamW + warmup + cosine: the same head, to float rounding."""
    built = []

    class Recorded(probes.AttentivePoolingClassifier):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    streamed = _streamed(encoder, folder, 3, tmp_path)
    monkeypatch.setattr(probes, "AttentivePoolingClassifier", Recorded)
    from genlip_lit.checkpoints.loading import load_checkpoint

    module, _ = load_checkpoint(encoder)
    data = ImageFolderSet(folder, seed=0)
    tf = FixedResTransform(SIZE)
    results = probes.run_probes(module, data.batches(tf, 64, "train"), data.batches(tf, 64, "val"), 3,
                                attentive_kwargs={"epochs": 3, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.05,
                                                  "warmup_epochs": 1, "seed": 0})
    (reference,) = built
    ours = streamed.probe_heads["attentive"].state_dict()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(ours[name], value, atol=2e-5, rtol=1e-4)  # stated tolerance: float rounding
    assert streamed.last_top1["attentive"] == pytest.approx(results["attentive"].top1, abs=1e-9)
    assert streamed.last_val_images == results["attentive"].num_test == 12
    # the linear heads differ by design (mini-batch AdamW vs full-batch L-BFGS with a weight-decay sweep)
    assert abs(streamed.last_top1["linear"] - results["linear"].top1) <= 0.25


def _args(encoder: str, folder: str, out: str, *extra: str, devices: int = 1) -> list[str]:
    return ["--model.encoder", encoder, "--data.data", folder, "--data.image_size", str(SIZE),
            "--data.batch_size", "16", "--data.num_workers", "0", "--data.augment", "random_resized_crop",
            "--trainer.max_epochs", "3", "--trainer.accelerator", "cpu", f"--trainer.devices={devices}",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.logger.init_args.name=probe", "--trainer.logger.init_args.version=0",
            "--checkpoint.every_n_train_steps=1", *extra]


def _heads(out: str) -> dict[str, torch.Tensor]:
    (last,) = glob.glob(f"{out}/probe/version_0/checkpoints/last.ckpt")
    state = torch.load(last, weights_only=True)["state_dict"]
    assert not any(k.startswith("encoder.") for k in state)  # the heads only: the encoder is named, not stored
    return state


@pytest.mark.slow
def test_two_gloo_ranks_killed_mid_epoch_resume_to_the_one_process_result(encoder, folder, tmp_path) -> None:
    """2 DDP ranks (gloo) see the global batches of 1 process, so the heads agree; a SIGKILL mid-epoch and a resume
    (here on 1 process, from the 2-rank checkpoint) land on the same heads as the run that was never stopped."""
    from genlip_lit.commands.probe_full import main

    one = str(tmp_path / "one")
    assert main(_args(encoder, folder, one)) == 0  # in-process: the reference, never stopped
    two = str(tmp_path / "two")
    # 48 train images at global batch 16: 3 steps an epoch; every rank kills itself at step 5 before that step's
    # checkpoint, so the last checkpoint is step 4: one batch into the second epoch
    argv = [sys.executable, "-m", "genlip_lit.cli", "-q", "probe-full",
            *_args(encoder, folder, two, "--trainer.strategy=ddp", "--trainer.callbacks+=tests.helpers.KillAtStep",
                   "--trainer.callbacks.step=5", devices=2)]
    killed = subprocess.run(argv, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = f"{two}/probe/version_0/checkpoints/last.ckpt"
    state = torch.load(last, weights_only=True)
    assert (state["global_step"], state["epoch"]) == (4, 1)
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 1}]
    assert main(_args(encoder, folder, two, f"--ckpt_path={last}")) == 0
    reference, resumed = _heads(one), _heads(two)
    assert reference.keys() == resumed.keys()
    for name in reference:  # stated tolerance: float rounding of gradients averaged over 2 ranks
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-5, rtol=1e-4)
    rows = open(f"{two}/probe/version_0/val_predictions.csv").read().splitlines()
    assert rows == open(f"{one}/probe/version_0/val_predictions.csv").read().splitlines()
    assert rows[0] == "key,label,attentive_prediction,linear_prediction" and len(rows) == 13
    key, label = rows[1].split(",")[:2]  # each figure leads back to its file
    assert os.path.isfile(os.path.join(folder, key)) and key.startswith(label + os.sep)


def test_the_imagenet_config_parses_and_mistakes_are_one_line(tmp_path, capsys) -> None:
    from genlip_lit.cli import main

    config = os.path.join(REPO, "experiments", "probe_imagenet.yaml")
    with pytest.raises(SystemExit) as info:
        main(["probe-full", "--config", config, "--print_config"])
    printed = capsys.readouterr().out
    assert info.value.code == 0 and "attentive_lr: 0.001" in printed and "batch_size: 1024" in printed
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_key: 1\n")
    with pytest.raises(SystemExit):
        main(["probe-full", "--config", str(bad)])
    assert f"{bad}: no_such_key: not an option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe-full", "--model.encoder", str(tmp_path / "none.ckpt"), "--data.data", str(tmp_path)])
    assert "checkpoint not found" in capsys.readouterr().err


def test_shards_from_optimize_labels_folders_read_as_the_folder(folder, tmp_path) -> None:
    """The probe reads `genlip optimize --labels folders` shards: the same images, labels and class names."""
    from genlip_lit.commands import optimize
    from genlip_lit.data.transforms import Preprocessing
    from genlip_lit.studies.probe_data import LabelledImages

    out = str(tmp_path / "shards")
    optimize.main(["--input", folder, "--labels", "folders", "--output", out, "--val-fraction", "0.3",
                   "--num-workers", "1"])
    data = ProbeDataModule(out, batch_size=4, num_workers=0, image_size=SIZE)
    assert data.class_names == ["class0", "class1", "class2"]
    val = LabelledImages(out, "val", ProbeTransform(Preprocessing(SIZE), train=False, crop_fraction=1.0))
    assert 0 < len(val) < 60
    for i in range(len(val)):
        item = val[i]
        path = os.path.join(folder, item["key"] + ".png")  # the key leads back to the file
        assert item["label"] == int(item["key"][len("class")])
        assert torch.equal(item["pixels"], FixedResTransform(SIZE)(Image.open(path)))
