"""Evaluation callbacks in a real (tiny) fit: TensorBoard figures, checkpointed history, probe baselines, and a
labelled 10-class corpus (not the embedded scenes) probed during fit, through a CSV logger, and by `genlip probe`."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import REPO, tiny_fit_args

from genlip_lit.callbacks.evaluation import EvalCallback, EvalResult
from genlip_lit.cli import main

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
    scalars = acc.Tags()["scalars"]
    return acc.Tags() | {"_scalar_steps": {t: [s.step for s in acc.Scalars(t)] for t in scalars},
                         "_values": {t: [s.value for s in acc.Scalars(t)] for t in scalars}}


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
    assert any("probe/table" in t for t in tags["tensors"])
    # the two baseline rows sit beside the encoder's; they do not train, so both evaluations log the same values
    for tag in ("probe/pixels_linear_top1", "probe/random_init_linear_top1", "probe/random_init_attentive_top1"):
        assert tags["_scalar_steps"][tag] == [2, 4], tag
        first, second = tags["_values"][tag]
        assert first == second and 0.0 <= first <= 1.0, tag
    assert tags["_values"]["probe/chance"] == pytest.approx([1 / 6, 1 / 6])  # the embedded scenes' six shapes


def test_history_is_kept_in_checkpoints(fitted) -> None:
    (last,) = glob.glob(f"{fitted}/runs/quickstart/version_0/checkpoints/last.ckpt")
    states = torch.load(last, weights_only=True)["callbacks"]
    assert "LinearProbe{'every_n_steps': 2, 'budget': 32, 'image_folder': None}" in states
    probe = next(v for k, v in states.items() if k.startswith("LinearProbe"))
    assert [h["step"] for h in probe["history"]] == [2, 4] and 0.0 <= probe["history"][0]["probe/linear_top1"] <= 1
    cb = EvalCallback()
    cb.load_state_dict(probe)
    assert cb.history == probe["history"] and cb.state_dict()["last_step"] == 4


class _DrawsRandomNumbers(EvalCallback):
    def evaluate(self, module, view) -> EvalResult:
        return EvalResult(scalars={"draw": float(torch.rand(()))})  # e.g. a probe's init or a sample order


def test_an_evaluation_leaves_the_global_rng_where_it_was(tmp_path) -> None:
    from types import SimpleNamespace

    trainer = SimpleNamespace(global_step=2, strategy=None, is_global_zero=True, loggers=[],
                              datamodule=SimpleNamespace(data_dirs=[str(tmp_path)], synthetic=True))
    module = torch.nn.Linear(2, 2)
    module.device = torch.device("cpu")
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    result = _DrawsRandomNumbers().run(trainer, module)
    assert torch.equal(torch.random.get_rng_state(), before) and module.training
    assert result.scalars["draw"] == torch.rand(()).item()  # the draw the training would have made next


def _fit_weights(tmp: Path, extra: list[str]) -> dict[str, torch.Tensor]:
    # drop-path 0.1 in every block: training draws from the global RNG, so an evaluation that moved it would show
    args = tiny_fit_args(tmp, max_steps=3, extra=[
        "--model.init_args.arch_overrides={depth: 2, width: 64, ffn_hidden: 128, drop_path: 0.1, "
        "drop_path_schedule: uniform}", *extra])
    assert main(args) == 0
    (last,) = glob.glob(f"{tmp}/runs/quickstart/version_0/checkpoints/last.ckpt")
    return torch.load(last, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_callbacks_do_not_change_training(tmp_path) -> None:
    # Every evaluation (at step 2, between training steps, and at the end; probe baselines included) and the
    # Throughput callback's FLOP-counted step 0: the weights are bit for bit those of a fit without them.
    os.chdir(REPO)
    plain = _fit_weights(tmp_path / "plain", [])
    callbacks = []
    for name in CALLBACKS:
        callbacks += [f"--trainer.callbacks+=genlip_lit.callbacks.{name}", "--trainer.callbacks.every_n_steps=2",
                      "--trainer.callbacks.budget=16", "--trainer.callbacks.batch_size=16"]
        if name == "LinearProbe":
            callbacks += ["--trainer.callbacks.test_budget=16", "--trainer.callbacks.attentive_epochs=1"]
    evaluated = _fit_weights(tmp_path / "evaluated", [*callbacks, "--trainer.callbacks+=genlip_lit.callbacks.Throughput"])
    assert plain.keys() == evaluated.keys()
    assert [k for k in plain if not torch.equal(plain[k], evaluated[k])] == []


# ---------------------------------------------------------------------------------------------- 10 labelled classes
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def digit_corpus(tmp_path_factory):
    """scikit-learn's handwritten digits (bundled, no download) as a captioned, labelled corpus written by
    `genlip optimize --classes`: 10 classes whose names live in the shards' genlip_meta.json."""
    import json

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("digits")
    images = tmp / "in"
    images.mkdir()
    digits = load_digits()
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.images[:300], digits.target[:300])):
        img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR)
        img.convert("RGB").save(images / f"{i}.png")
        name = DIGIT_NAMES[int(label)]
        rows.append(json.dumps({"path": f"{i}.png", "caption": f"a handwritten {name}", "label": name}))
    (images / "rows.jsonl").write_text("\n".join(rows) + "\n")
    (tmp / "classes.txt").write_text("\n".join(DIGIT_NAMES) + "\n")
    (tmp / "captions.txt").write_text("\n".join(f"a handwritten {n}" for n in DIGIT_NAMES) + "\n")
    out = tmp / "corpus"
    assert main(["optimize", "--input", str(images / "rows.jsonl"), "--output", str(out), "--classes",
                 str(tmp / "classes.txt"), "--val-fraction", "0.25", "--num-workers", "1"]) == 0
    return tmp


@pytest.mark.slow
def test_fit_on_a_ten_class_corpus_probes_its_classes_and_logs_through_csv(digit_corpus, capsys) -> None:
    import csv

    from genlip_lit.studies.compare_report import read_scalars

    tmp = digit_corpus
    os.chdir(REPO)
    args = tiny_fit_args(tmp, max_steps=4, extra=[
        "--data.init_args.synthetic=null", f"--data.init_args.data_dir={tmp / 'corpus'}",
        f"--model.init_args.tokenizer.init_args.compact_corpus={tmp / 'captions.txt'}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp}/runs", "--trainer.logger.init_args.name=digits",
        "--trainer.callbacks+=genlip_lit.callbacks.LinearProbe", "--trainer.callbacks.budget=120",
        "--trainer.callbacks.test_budget=60", "--trainer.callbacks.attentive_epochs=2",
        "--trainer.callbacks+=genlip_lit.callbacks.ZeroShot", "--trainer.callbacks.budget=16",
        "--trainer.callbacks+=genlip_lit.callbacks.AttentionSink", "--trainer.callbacks.budget=8",
    ])
    assert main(args) == 0
    (log_dir,) = glob.glob(f"{tmp}/runs/digits/version_*")
    with open(os.path.join(log_dir, "metrics.csv")) as fh:
        assert "probe/chance" in next(csv.reader(fh))  # the callbacks logged through the CSV logger
    scalars = read_scalars(Path(log_dir))  # what `genlip compare` reads back from a CSV run
    assert scalars["probe/chance"] == [(4, pytest.approx(0.1))]  # 10 classes from the metadata, not 6 shapes
    assert scalars["zero_shot/chance"] == [(4, pytest.approx(0.1))]
    for tag in ("probe/linear_top1", "probe/attentive_top1", "probe/pixels_linear_top1",
                "probe/random_init_linear_top1", "probe/random_init_attentive_top1"):
        assert 0.0 <= scalars[tag][-1][1] <= 1.0, tag
    assert len(scalars["val/loss"]) == 2  # the trainer's own metrics come back too (2 validations)
    # images, tables and text reach a CSV run too, as files beside metrics.csv
    media = sorted(os.listdir(os.path.join(log_dir, "media")))
    assert {"probe_table_step4.md", "probe_table_step4.csv", "sink_per_layer_step4.png"} <= set(media)

    # `genlip probe` reads the same labelled shards: class names from their metadata
    (last,) = glob.glob(f"{log_dir}/checkpoints/last.ckpt")
    capsys.readouterr()
    assert main(["probe", "--ckpt", last, "--data", str(tmp / "corpus"), "--budget", "120", "--test-budget", "60",
                 "--attentive-epochs", "2", "--device", "cpu", "--output", str(tmp / "probe")]) == 0
    printed = capsys.readouterr().out
    assert "| uniform chance (1/10) | 10.0% | 10.0% |" in printed
    assert all(row in printed for row in ("| encoder |", "| raw pixels (patch-grid means) |", "| random init |",
                                          "| majority class ("))
    # ... and `genlip eval` with the fit's probe settings: one rule picks the samples (eval/labelled.py
    # reading_order), so the end-of-fit line, eval's report and probe's table give the same figures
    config = tmp / "probe_eval.yaml"
    config.write_text("evaluations:\n  - class_path: LinearProbe\n    init_args: {budget: 120, test_budget: 60, "
                      "attentive_epochs: 2}\n")
    assert main(["eval", "--ckpt", last, "--config", str(config), "--output", str(tmp / "eval"), "--device", "cpu"]) == 0
    report = json.loads((tmp / "eval" / "report.json").read_text())["evaluations"]["probe"]
    settings = report["details"]["settings"]
    probed = json.loads((tmp / "probe" / "probe.json").read_text())
    assert settings == probed["settings"]  # the same settings line under both tables
    for row in ("linear", "attentive", "random_init_linear", "pixels_linear", "majority"):
        tag = f"probe/{row}_top1"
        assert report["scalars"][tag] == pytest.approx(scalars[tag][-1][1]), tag  # eval == end of fit
        assert probed[row]["top1"] == pytest.approx(report["scalars"][tag]), tag  # == genlip probe


# ---------------------------------------------------------------------------------------------- progress lines
class _Brightness(EvalCallback):
    """Reads the train split, then the val split, and reports the mean pixel: a stand-in with two passes."""

    name = "bright"
    title = "brightness"
    headline = ("bright/mean",)

    def plan(self, view):
        return f"up to {self.budget} train + {self.budget} val samples", 2 * self.budget, 2, "both read, averaging"

    def evaluate(self, module, view):
        from genlip_lit.eval.result import EvalResult

        seen = [pixels for pixels, _ in view.labelled("train", self.budget, self.batch_size)]
        seen += [b.pixel_values for b in view.batches("val", self.budget, self.batch_size)]
        return EvalResult({"bright/mean": float(torch.cat(seen).mean())})


class _FakeModule(torch.nn.Module):
    device = torch.device("cpu")


def _fake_trainer(step: int):
    from types import SimpleNamespace

    return SimpleNamespace(global_step=step, is_global_zero=True, datamodule=object(), loggers=[],
                           strategy=object(), sanity_checking=False)


def test_each_run_says_what_it_reads_with_counts_eta_and_its_figures(monkeypatch, caplog) -> None:
    from genlip_lit.callbacks import evaluation
    from genlip_lit.eval.data import EvalBatch, EvalView, Vocabulary

    class HalfGrey(EvalView):
        def __init__(self, datamodule, device):
            super().__init__(Vocabulary(), device, "fake")

        def _batches(self, split, batch_size):
            for _ in range(10):  # 40 samples a split in batches of 4
                yield EvalBatch(torch.full((4, 3, 2, 2), 0.5), torch.zeros(4, dtype=torch.long))

    monkeypatch.setattr(evaluation, "DataModuleView", HalfGrey)
    monkeypatch.setenv("GENLIP_PROGRESS", "plain")
    caplog.set_level("INFO", logger="genlip_lit")
    module = _FakeModule().train()
    callback = _Brightness(every_n_steps=3, budget=20, batch_size=4)
    callback.on_fit_end(_fake_trainer(step=7), module)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "end of fit: brightness (up to 20 train + 20 val samples; under 50 samples: a noisy figure)"
    assert any(line.startswith("end of fit: brightness: 12/40 samples (30.0%), ") and "ETA" in line
               for line in lines), lines  # a line per quarter: 12 samples is the first batch past 25%
    # counted once used: the line after a batch was evaluated, not when it was handed out
    assert "end of fit: brightness: both read, averaging" in lines  # after its two passes over the data
    assert lines[-1].startswith("end of fit: brightness: done, 40 samples in ") and lines[-1].endswith(
        "bright/mean 0.5")
    assert module.training and callback.history[0]["step"] == 7 and callback.history[0]["bright/mean"] == 0.5
    caplog.clear()
    callback.on_train_batch_end(_fake_trainer(step=9), module, None, None, 0)  # every 3 steps: a mid-run one
    assert caplog.records[0].getMessage().startswith("step 9: brightness (up to 20 train + 20 val samples; ")


def test_counts_are_capped_by_what_the_split_holds(tmp_path) -> None:
    import json
    from types import SimpleNamespace

    from genlip_lit.callbacks.evaluation import LinearProbe, PatchReadout

    for split, sizes in (("train", [100, 20]), ("val", [7])):
        (tmp_path / split).mkdir()
        (tmp_path / split / "index.json").write_text(json.dumps({"chunks": [{"chunk_size": n} for n in sizes]}))
    view = SimpleNamespace(datamodule=SimpleNamespace(data_dirs=[str(tmp_path)]))
    assert PatchReadout(budget=256).plan(view) == ("7 val samples", 7, 1, "")
    assert LinearProbe(budget=1000, test_budget=500).plan(view)[:3] == ("120 train + 7 val samples", 127, 2)
    remote = SimpleNamespace(datamodule=SimpleNamespace(data_dirs=["s3://bucket/shards"]))
    assert PatchReadout(budget=256).plan(remote) == ("up to 256 val samples", 256, 1, "")
