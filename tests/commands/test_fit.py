"""`genlip fit` user errors: one short message (at most 5 lines) naming the key, file or value, for each kind;
`--optimizer` refused; `None`/`null` on the command line; the progress bar chosen by the output."""

from __future__ import annotations

import glob
import io
import sys

import pytest
from helpers import REPO, tiny_fit_args

from genlip_lit.cli import main

MAX_LINES = 5


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _error(capsys, argv: list[str]) -> str:
    """stderr of a failing `genlip ...`: exit code 2, no traceback, at most MAX_LINES lines."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= MAX_LINES, err
    return err


def _error_lines(err: str) -> list[str]:
    """From `genlip: error: ...` on (Lightning may print `Seed set to 0` before)."""
    lines = err.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("genlip: error: "))
    return lines[first:]


# ------------------------------------------------------------------ parse errors (no model is built)
def test_unknown_option_of_a_class_names_key_class_and_suggests(tmp_path, capsys):
    err = _error(capsys, tiny_fit_args(tmp_path, extra=["--model.init_args.lerning_rate=0.1"]))
    assert _error_lines(err) == [
        "genlip: error: model.init_args.lerning_rate: not an option of genlip_lit.modules.GenLIPModule",
        "its options: genlip fit --model.help genlip_lit.modules.GenLIPModule",
    ]


def test_unknown_key_in_a_yaml_file_is_named_with_the_closest(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    lrr: 3\n")
    err = _error(capsys, [*tiny_fit_args(tmp_path), "--config", str(bad)])
    assert _error_lines(err)[0] == ("genlip: error: model.init_args.lrr: not an option of "
                                    "genlip_lit.modules.GenLIPModule; did you mean 'lr'?")
    bad.write_text("trainer:\n  max_stepz: 3\n")
    err = _error(capsys, [*tiny_fit_args(tmp_path), "--config", str(bad)])
    assert _error_lines(err)[0] == "genlip: error: trainer.max_stepz: not an option; did you mean 'trainer.max_steps'?"


def test_unknown_flag_is_named(tmp_path, capsys):
    err = _error(capsys, tiny_fit_args(tmp_path, extra=["--trainer.max_stepz", "3"]))
    assert _error_lines(err)[0] == ("genlip: error: --trainer.max_stepz: not an option; "
                                    "did you mean '--trainer.max_steps'?")


def test_wrong_type_names_key_type_and_value(tmp_path, capsys):
    err = _error(capsys, tiny_fit_args(tmp_path, extra=["--data.init_args.batch_size", "many"]))
    assert _error_lines(err)[0] == "genlip: error: data.init_args.batch_size: expected int, got 'many'"
    err = _error(capsys, tiny_fit_args(tmp_path, extra=["--trainer.precision", "bogus"]))
    line = _error_lines(err)[0]
    assert line.startswith("genlip: error: trainer.precision: got 'bogus', expected one of int, ")
    assert "'bf16-mixed'" in line


def test_unknown_class_path_is_named_with_the_expected_base(tmp_path, capsys):
    err = _error(capsys, tiny_fit_args(tmp_path, extra=["--model=genlip_lit.modules.GenLIPModul"]))
    assert _error_lines(err) == [
        "genlip: error: model: cannot import 'genlip_lit.modules.GenLIPModul' (module 'genlip_lit.modules' has no "
        "attribute 'GenLIPModul'); did you mean 'genlip_lit.modules.GenLIPModule'?",
        "expected the import path of a subclass of genlip_lit.modules.base.EncoderModule",
    ]
    err = _error(capsys, tiny_fit_args(tmp_path, extra=["--model.init_args.tokenizer", "nosuch.Tokenizer"]))
    assert "model.init_args.tokenizer: cannot import 'nosuch.Tokenizer' (No module named 'nosuch')" in err


def test_config_file_missing_or_not_yaml_is_named(tmp_path, capsys):
    err = _error(capsys, ["fit", "--config", str(tmp_path / "nope.yaml")])
    assert _error_lines(err) == [f"genlip: error: --config {tmp_path / 'nope.yaml'}: file not found"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: [unclosed\n")
    err = _error(capsys, ["fit", "--config", str(broken)])
    assert _error_lines(err)[0].startswith(f"genlip: error: --config {broken}: not valid YAML: ")
    assert "(line 2, column 1)" in err


def test_missing_ckpt_path_is_named_before_building_anything(tmp_path, capsys):
    err = _error(capsys, tiny_fit_args(tmp_path, extra=[f"--ckpt_path={tmp_path}/none.ckpt"]))
    assert _error_lines(err) == [f"genlip: error: checkpoint not found: {tmp_path}/none.ckpt (--ckpt_path)"]


def test_optimizer_and_lr_scheduler_are_refused(tmp_path, capsys):
    for extra in (["--optimizer", "torch.optim.SGD"], ["--lr_scheduler.class_path=torch.optim.lr_scheduler.StepLR"]):
        err = _error(capsys, tiny_fit_args(tmp_path, extra=extra))
        (line,) = _error_lines(err)
        assert line.startswith("genlip: error: --optimizer/--lr_scheduler are not supported")
        assert "no-decay parameter groups" in line and "model.init_args.lr" in line
    config = tmp_path / "sgd.yaml"
    config.write_text("optimizer:\n  class_path: torch.optim.SGD\n  init_args: {lr: 0.1}\n")
    err = _error(capsys, [*tiny_fit_args(tmp_path), "--config", str(config)])
    assert _error_lines(err)[0].startswith("genlip: error: --optimizer/--lr_scheduler are not supported")


def test_null_and_none_on_the_command_line_are_none(capsys):
    """`--model.init_args.tokenizer.init_args.compact_corpus=null` was the string 'None' (jsonargparse re-reads
    nested class arguments from their printed form)."""
    for value in ("null", "None"):
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", "experiments/quickstart.yaml", "--print_config",
                  f"--model.init_args.tokenizer.init_args.compact_corpus={value}"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "compact_corpus: null" in out and "compact_corpus: None" not in out


def test_help_still_works(capsys):
    assert main(["fit", "--help"]) == 0  # the project's page (tests/commands/test_fit_help.py)
    assert "trainer.max_steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help", "full"])  # Lightning's complete help
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.max_steps" in out and "--optimizer" not in out


# ------------------------------------------------------------------ errors while building model, data, trainer
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model.init_args.init_from=/nonexistent/stage1.ckpt"], "checkpoint not found: '/nonexistent/stage1.ckpt'"),
        (["--model.init_args.arch=b17"], "unknown GenLIP preset 'b17'"),
        (["--model.init_args.arch_overrides={depht: 2}"], "unknown architecture key(s) ['depht']"),
        (["--model.init_args.lr=-1"], "model.lr must be > 0, got -1.0"),
        (["--data.init_args.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
        (["--trainer.strategy=nosuch"], "trainer: You selected an invalid strategy name: `strategy='nosuch'`"),
    ],
    ids=["init_from", "arch", "arch_overrides", "lr", "batch_size", "trainer"],
)
def test_bad_values_refused_by_constructors_are_one_line(tmp_path, capsys, extra, expected):
    err = _error(capsys, tiny_fit_args(tmp_path, extra=extra))
    lines = _error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err


def test_unwritable_output_dir_is_named(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    err = _error(capsys, tiny_fit_args(tmp_path, extra=[f"--trainer.logger.init_args.save_dir={blocker}/runs"]))
    assert _error_lines(err) == [f"genlip: error: trainer.logger.init_args.save_dir: cannot create {blocker}/runs "
                                 "(Not a directory)"]


def test_unreadable_data_is_named(tmp_path, capsys):
    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    (shards / "train" / "index.json").write_text("{ this is not json")
    argv = tiny_fit_args(tmp_path, extra=["--data.init_args.synthetic=null", f"--data.init_args.data_dir={shards}"])
    err = _error(capsys, argv)
    assert str(shards / "train" / "index.json") in _error_lines(err)[0]


# ------------------------------------------------------------------ progress bar choice
def test_default_progress_bar_follows_the_terminal(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from genlip_lit.callbacks.plain_progress import PlainProgressBar
    from genlip_lit.commands.fit import default_progress_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("GENLIP_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(default_progress_bar(), PlainProgressBar)
    monkeypatch.setattr(sys, "stderr", Tty())
    assert isinstance(default_progress_bar(), RichProgressBar)


@pytest.mark.slow
def test_fit_in_a_log_file_prints_plain_progress_lines(tmp_path, capsys):
    argv = tiny_fit_args(tmp_path, max_steps=4, extra=[
        "--trainer.enable_progress_bar=true",
        "--trainer.callbacks+=genlip_lit.callbacks.plain_progress.PlainProgressBar",
        "--trainer.callbacks.init_args.percent_step=50",
        "--trainer.callbacks+=genlip_lit.callbacks.PatchReadout", "--trainer.callbacks.budget=8",
    ])
    assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genlip: fit")]
    assert lines[0].startswith("genlip: fit: 2/4 steps (50.0%), ") and "ETA " in lines[0] and "loss" in lines[0]
    assert any(line.startswith("genlip: fit > validate: done, 1 batches in ") for line in lines)
    assert lines[-1].startswith("genlip: fit: done, 4 steps in ")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(glob.glob(f"{tmp_path}/runs/quickstart/version_*")[0])
    events.Reload()
    assert len(events.Scalars("val/loss")) == 2  # steps 2 and 4: the closing line has the last one's loss
    assert f"val/loss {events.Scalars('val/loss')[-1].value:.4g}" in lines[-1], lines[-1]
    assert "\r" not in err  # no redrawn bars in a log file
    # then the end-of-fit evaluation says what it does, and the run ends with one line naming what to run next
    ours = [line for line in err.splitlines() if line.startswith("genlip: ")]
    start = ours.index("genlip: end of fit: patch readout (8 val samples; under 50 samples: a noisy figure)")
    assert ours[start + 1:-1][-1].startswith("genlip: end of fit: patch readout: done, 8 samples in ")
    run = glob.glob(f"{tmp_path}/runs/quickstart/version_*")[0]
    assert ours[-1] == (f"genlip: done. checkpoint: {run}/checkpoints/last.ckpt. next: genlip caption --ckpt {run} "
                        f"IMAGE | genlip eval --ckpt {run} --config experiments/eval.yaml | genlip export --ckpt "
                        f"{run} --output DIR")


def test_end_of_fit_line_names_the_run_directory_relative_to_here(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from genlip_lit.checkpoints.loading import resolve_checkpoint
    from genlip_lit.commands.fit import end_of_fit_line

    folder = tmp_path / "runs" / "quickstart" / "version_3" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(last_model_path=str(folder / "last.ckpt")))
    line = end_of_fit_line(trainer)
    assert line == ("done. checkpoint: runs/quickstart/version_3/checkpoints/last.ckpt. next: genlip caption "
                    "--ckpt runs/quickstart/version_3 IMAGE | genlip eval --ckpt runs/quickstart/version_3 --config "
                    "experiments/eval.yaml | genlip export --ckpt runs/quickstart/version_3 --output DIR")
    assert resolve_checkpoint("runs/quickstart/version_3") == "runs/quickstart/version_3/checkpoints/last.ckpt"
    trainer.checkpoint_callback.last_model_path = ""  # checkpointing off: says so instead of naming a file
    assert end_of_fit_line(trainer).startswith("done (no checkpoint was written")


# ------------------------------------------------------------------ your own corpus on a CPU
def _corpus_args(tmp_path, corpus: str, *extra: str) -> list[str]:
    return tiny_fit_args(tmp_path, max_steps=2, extra=["--data.init_args.synthetic=null",
                                                       f"--data.init_args.data_dir={corpus}", *extra])


def test_compact_synthetic_vocabulary_on_a_real_corpus_is_one_line(tmp_path, capsys):
    from helpers import write_real_corpus

    corpus = write_real_corpus(tmp_path / "real")
    lines = _error_lines(_error(capsys, _corpus_args(tmp_path, corpus)))
    assert len(lines) == 1 and f"data_dir {corpus}: 12 of 12 sampled captions (of 12) hold unknown" in lines[0]


@pytest.mark.slow
def test_compact_corpus_data_is_the_training_corpus(tmp_path, capsys):
    """`compact_corpus: data` (experiments/corpus_cpu.yaml) = the data_dir: the vocabulary spells every caption,
    nothing is counted unknown, and the checkpoint and config.yaml name the directory."""
    import glob

    import torch
    from helpers import REAL_CAPTIONS, write_real_corpus

    from genlip_lit.data.tokenizer import OpenCLIPTokenizer

    corpus = write_real_corpus(tmp_path / "real")
    assert main(_corpus_args(tmp_path, corpus, "--model.init_args.tokenizer.init_args.compact_corpus=data")) == 0
    assert "compact vocabulary: " in capsys.readouterr().err
    ckpt = torch.load(glob.glob(f"{tmp_path}/runs/**/last.ckpt", recursive=True)[0], weights_only=True)
    tokenizer = ckpt["genlip_tokenizer"]
    assert tokenizer["init_args"] == {"compact_corpus": corpus}
    full = OpenCLIPTokenizer()
    assert sorted(tokenizer["state"]["compact_base_ids"]) == sorted({i for c in REAL_CAPTIONS for i in full.encode(c)})
    assert ckpt["genlip_unknown_tokens"] == 0
    config = open(glob.glob(f"{tmp_path}/runs/**/config.yaml", recursive=True)[0]).read()
    assert f"compact_corpus: {corpus}" in config


def test_compact_corpus_data_needs_one_data_dir(tmp_path, capsys):
    argv = tiny_fit_args(tmp_path, extra=["--model.init_args.tokenizer.init_args.compact_corpus=data"])
    lines = _error_lines(_error(capsys, argv))  # the quickstart trains on synthetic data: no data_dir
    assert len(lines) == 1 and "compact_corpus: data builds the vocabulary from one data.init_args.data_dir" in lines[0]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_recipe_on_a_cpu_machine_is_one_line_naming_the_cpu_config(tmp_path, capsys):
    argv = ["fit", "--config", "experiments/stage1_corpus.yaml", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    lines = _error_lines(_error(capsys, argv))
    assert lines == ["genlip: error: trainer.accelerator is 'gpu' but this machine has no GPU: on a CPU train your "
                     "own data with experiments/corpus_cpu.yaml (or the embedded data with experiments/quickstart.yaml)"
                     ", or pass --trainer.accelerator cpu"]


@pytest.mark.parametrize("typo", [["--trainer.max_step", "10"], ["--trainer.max_step=10"], ["--checkpoint.save_las=1"]])
def test_a_prefix_of_an_option_is_an_unknown_option_never_the_option(tmp_path, capsys, typo):
    """At 74076bd argparse's allow_abbrev took `--trainer.max_step 10` for `--trainer.max_steps 10`."""
    err = _error(capsys, tiny_fit_args(tmp_path, extra=typo))
    flag = typo[0].split("=")[0]
    full = {"--trainer.max_step": "--trainer.max_steps", "--checkpoint.save_las": "--checkpoint.save_last"}[flag]
    assert _error_lines(err)[0].startswith(f"genlip: error: {flag}") and f"did you mean '{full}'?" in err


def test_native_resolution_for_a_fixed_resolution_objective_is_refused_before_any_data(tmp_path, capsys):
    """CLIP on packed native-resolution rows: one line at start-up, before any synthetic data is generated."""
    argv = tiny_fit_args(tmp_path, extra=["--config", "experiments/compare/clip.yaml",
                                          "--data.init_args.resolution=native",
                                          f"--data.init_args.cache_dir={tmp_path / 'cache'}"])
    err = _error(capsys, argv)
    assert _error_lines(err) == ["genlip: error: ContrastiveModule trains on fixed-resolution batches: use "
                                 "data.resolution: fixed (packed native-resolution sequences are a GenLIPModule "
                                 "feature)"]
    assert not (tmp_path / "cache").exists()


def _merged_synthetic(tmp_path, capsys, *argv: str) -> dict:
    import yaml

    with pytest.raises(SystemExit):
        main(["fit", *argv, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["synthetic"]


def test_a_later_config_setting_some_synthetic_keys_keeps_the_others(tmp_path, capsys):
    """`synthetic` is a plain dict: jsonargparse alone replaced it whole, so an overlay changing one key silently
    fell back to the default (shapes) world. It merges key by key now, as every other section does."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  init_args:\n    synthetic: {glyph_prob: 1.0, image_size: 32}\n")
    got = _merged_synthetic(tmp_path, capsys, "--config", "experiments/quickstart_transfer.yaml", "--config",
                            str(overlay), "--data.init_args.synthetic.seed=3")
    assert got["world"] == "rich" and got["num_train"] == 20000 and got["blur_prob"] == 0.2  # kept
    assert got["glyph_prob"] == 1.0 and got["image_size"] == 32  # the overlay's
    assert str(got["seed"]) == "3"  # a command-line key after the files still wins


def test_a_config_naming_another_world_or_null_starts_the_synthetic_block_afresh(tmp_path, capsys):
    other = tmp_path / "shapes.yaml"
    other.write_text("data:\n  init_args:\n    synthetic: {world: shapes, num_train: 64}\n")
    got = _merged_synthetic(tmp_path, capsys, "--config", "experiments/quickstart_transfer.yaml", "--config",
                            str(other))
    assert got == {"world": "shapes", "num_train": 64}  # no rich-world key carried into the shapes world
    from genlip_lit.commands.fit import merge_synthetic_blocks

    argv = ["fit", "--config", "experiments/quickstart.yaml", "--config", "experiments/corpus_cpu.yaml"]
    assert merge_synthetic_blocks(argv) == argv  # corpus_cpu sets it null: nothing to merge
