"""`genlip` in-process: fit a few steps, resume, caption, and one clear line for each kind of bad input."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch
from helpers import RECORDS, REPO, tiny_fit_args
from PIL import Image

from genlip_lit.cli import EXTRA_COMMANDS, LIGHTNING_COMMANDS, command_table, main, version
from genlip_lit.data.synthetic import SceneConfig, generate_scene


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _last_ckpt(tmp_path) -> str:
    (path,) = glob.glob(f"{tmp_path}/runs/quickstart/version_*/checkpoints/last.ckpt")
    return path


@pytest.fixture(scope="module")
def trained(quickstart_run_4):
    """One 4-step quickstart-shaped run shared by the tests below (this module's copy: tests/conftest.py)."""
    return quickstart_run_4


@pytest.mark.slow
def test_fit_runs_and_checkpoints(trained):
    tmp, records = trained
    ckpt = torch.load(_last_ckpt(tmp), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["genlip_module_class"] == "genlip_lit.modules.genlip.GenLIPModule"
    assert ckpt["datamodule_hyper_parameters"]["image_size"] == 32
    steps = [r["step"] for r in records if r["event"] == "step"]
    assert steps == [1, 2, 3, 4]
    # config saved with the run
    assert glob.glob(f"{tmp}/runs/quickstart/version_*/config.yaml")


@pytest.mark.slow
def test_resume_continues_same_step_and_lr(trained, tmp_path):
    tmp, first = trained
    # The periodic checkpoint at step 2 and the schedule state saved with it.
    (ckpt,) = glob.glob(f"{tmp}/runs/quickstart/version_*/checkpoints/step*2*.ckpt")
    lr_after_step2 = next(r["lr"] for r in first if r["event"] == "step" and r["step"] == 2)
    RECORDS.clear()
    cache = torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]["cache_dir"]  # the run's own data
    extra = ["--trainer.callbacks+=helpers.Recorder", f"--ckpt_path={ckpt}", f"--data.init_args.cache_dir={cache}"]
    args = tiny_fit_args(tmp_path, max_steps=4, extra=extra)  # same data, fresh log dir
    assert main(args) == 0
    start = next(r for r in RECORDS if r["event"] == "start")
    assert start["step"] == 2
    assert start["lr"] == pytest.approx(lr_after_step2, rel=1e-9)
    resumed = [(r["step"], r["lr"]) for r in RECORDS if r["event"] == "step"]
    original = [(r["step"], r["lr"]) for r in first if r["event"] == "step" and r["step"] > 2]
    assert [s for s, _ in resumed] == [s for s, _ in original] == [3, 4]
    assert [lr for _, lr in resumed] == pytest.approx([lr for _, lr in original], rel=1e-9)


@pytest.mark.slow
def test_caption_prints_one_line_per_image(trained, tmp_path, capsys):
    tmp, _ = trained
    paths = []
    for i in range(2):
        p = tmp_path / f"scene{i}.png"
        generate_scene(123, i, SceneConfig(image_size=32)).image.save(p)
        paths.append(str(p))
    capsys.readouterr()
    assert main(["caption", "--ckpt", _last_ckpt(tmp), *paths, "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == paths


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unknown_config_key_is_named(tmp_path, capsys):
    err = _error(capsys, tiny_fit_args(tmp_path, extra=["--model.init_args.lerning_rate=0.1"]))
    assert "lerning_rate" in err


def test_unknown_yaml_key_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_stepz: 3\n")
    err = _error(capsys, [*tiny_fit_args(tmp_path), "--config", str(bad)])
    assert "max_stepz" in err


def test_wrong_class_path_is_named(tmp_path, capsys):
    err = _error(capsys, tiny_fit_args(tmp_path, extra=["--model=genlip_lit.modules.NoSuchModule"]))
    assert "NoSuchModule" in err


def test_missing_data_dir_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    argv = tiny_fit_args(tmp_path, extra=["--data.init_args.synthetic=null", f"--data.init_args.data_dir={missing}"])
    err = _error(capsys, argv)
    assert str(missing) in err and "genlip optimize" in err


def test_caption_rejects_a_missing_image_before_the_checkpoint(tmp_path, capsys):
    # a file that is there but does not decode is skipped and counted: tests/commands/test_caption.py
    err = _error(capsys, ["caption", "--ckpt", str(tmp_path / "x.ckpt"), str(tmp_path / "none.png")])
    assert "image file not found" in err and str(tmp_path / "none.png") in err


def test_caption_rejects_missing_checkpoint(tmp_path, capsys):
    img = tmp_path / "ok.png"
    Image.new("RGB", (32, 32)).save(img)
    err = _error(capsys, ["caption", "--ckpt", str(tmp_path / "missing.ckpt"), str(img)])
    assert "checkpoint not found" in err


def test_stage1_corpus_config_runs_on_an_optimized_corpus(tmp_path):
    """The cluster config, shrunk to CPU: optimize a demo corpus, then fit on it with a resumable stop."""
    from genlip_lit.ingest.demo_corpus import write_demo_corpus

    demo = write_demo_corpus(str(tmp_path / "demo"), num_images=48, layouts=("webdataset",))
    assert main(["optimize", "--input", demo["webdataset"], "--output", str(tmp_path / "shards"),
                 "--max-side", "64", "--val-fraction", "0.2", "--num-workers", "1"]) == 0
    argv = [
        "fit", "--config", "experiments/stage1_corpus.yaml",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
        "--trainer.precision=32-true", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}/runs", "--checkpoint.every_n_train_steps=2",
        "--model.init_args.arch=tiny", "--model.init_args.arch_overrides={depth: 1, width: 32, ffn_hidden: 64}",
        f"--data.init_args.data_dir={tmp_path}/shards", "--data.init_args.image_size=32",
        "--data.init_args.batch_size=4", "--data.init_args.val_batch_size=4", "--data.init_args.num_workers=0",
    ]
    assert main(argv) == 0
    (last,) = glob.glob(f"{tmp_path}/runs/stage1_b16/version_*/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 3  # the max_steps stop is saved too


def _fit_configs() -> list[str]:
    """experiments/*.yaml that configure `genlip fit` (eval.yaml configures `genlip eval`, probe_imagenet.yaml
    `genlip probe-full`: tests/studies/test_probe_full.py parses it)."""
    return [p for p in sorted(glob.glob(os.path.join(REPO, "experiments", "*.yaml")))
            if "\nmodel:" in (text := open(p, encoding="utf-8").read()) and "genlip probe-full --config" not in text]


@pytest.mark.parametrize("config", _fit_configs())
def test_every_experiment_config_parses(config, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", config, "--print_config"])
    assert info.value.code == 0 and "model:" in capsys.readouterr().out


TRANSFER_OVERLAYS = sorted(glob.glob(os.path.join(REPO, "experiments", "transfer", "*.yaml")))


@pytest.mark.parametrize("overlay", TRANSFER_OVERLAYS, ids=[os.path.basename(p) for p in TRANSFER_OVERLAYS])
def test_every_transfer_recipe_composes_after_the_rich_world_and_trains(overlay, tmp_path, capsys):
    """experiments/transfer/*.yaml are overlays on quickstart_transfer.yaml: composed, the model's patch size and
    the data's label maps agree, the world stays rich, and two steps train."""
    import yaml

    base = ["fit", "--config", os.path.join(REPO, "experiments", "quickstart_transfer.yaml"), "--config", overlay]
    with pytest.raises(SystemExit) as info:
        main([*base, "--print_config"])
    assert info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    model, synthetic = config["model"]["init_args"], config["data"]["init_args"]["synthetic"]
    assert synthetic["world"] == "rich"
    assert (model["arch_overrides"] or {}).get("patch_size", 8) == synthetic["patch_size"]
    assert config["data"]["init_args"]["image_size"] == synthetic["image_size"]
    assert main([*base, "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
                 "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                 f"--trainer.logger.init_args.save_dir={tmp_path}/runs", f"--data.init_args.cache_dir={tmp_path}/c",
                 "--data.init_args.synthetic.num_train=16", "--data.init_args.synthetic.num_val=8"]) in (0, None)
    (last,) = glob.glob(f"{tmp_path}/runs/*/version_*/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 2


# ------------------------------------------------------------------ the top level: help, version, typos, imports
# every command the top-level help must list: read from cli's command table, so a registered command needs no edit
ALL_COMMANDS = list(command_table())


def _listed_commands(text: str) -> dict[str, str]:
    """`  name   description` rows of the `commands:` block."""
    block = text.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.split(None, 1) for line in block.splitlines()]
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_help_lists_every_command_with_a_description(argv, capsys):
    assert main(argv) == 0
    listed = _listed_commands(capsys.readouterr().out)
    assert list(listed) == ALL_COMMANDS
    assert all(len(text) > 10 for text in listed.values()), listed


def test_every_registered_command_has_a_target_and_a_description():
    # the commands the README documents are all registered (a table that lost one would shrink every test below)
    assert {"fit", "optimize", "caption", "caption-eval", "eval", "probe", "probe-full", "compare", "export",
            "eval-res", "llm-probe", "plan", "import"} <= set(command_table())
    for name, (target, text) in command_table().items():
        module, _, function = target.partition(":")
        assert module.startswith("genlip_lit.") and function, name
        assert text and "\n" not in text and len(text) < 90, name
    assert set(LIGHTNING_COMMANDS) == {"fit", "validate", "test", "predict"}
    assert not set(LIGHTNING_COMMANDS) & set(EXTRA_COMMANDS)


def test_mistyped_command_lists_commands_and_suggests_the_closest(capsys):
    assert main(["captions", "--ckpt", "x"]) == 2
    err = capsys.readouterr().err
    assert set(ALL_COMMANDS) <= set(_listed_commands(err))
    assert err.strip().splitlines()[-1] == "genlip: error: unknown command 'captions'; did you mean `genlip caption`?"
    assert main(["zzzz"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "genlip: error: unknown command 'zzzz'"
    assert main(["--frobnicate"]) == 2
    assert "unknown option '--frobnicate'" in capsys.readouterr().err


def test_version(capsys):
    import genlip_lit

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"genlip {version()}"
    assert version() == genlip_lit.__version__  # pyproject and the package agree


def test_help_and_package_import_nothing_heavy():
    """`genlip --help` (and `import genlip_lit`, errors, logs, progress) must not import torch or Lightning:
    that is what made every command take 6-8 s to start."""
    code = (
        "import sys\n"
        "from genlip_lit.cli import main\n"
        "import genlip_lit.errors, genlip_lit.console.logs, genlip_lit.console.progress, genlip_lit.commands.parse_errors\n"
        "assert main(['--help']) == 0 and main(['--version']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'litdata', 'numpy', 'rich', 'jsonargparse')\n"
        "               if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "HEAVY []" in out, out


# ------------------------------------------------------------------ every command from the command table
# A command registered in cli.py is held to these with no edit here: --help, a bad option, --print_config.
# Known departures, each a defect to fix in the command (strict: the test fails once the command is fixed).
HELP_USAGE_DEFECTS: dict[str, str] = {}


def _table_params(defects: dict[str, str]) -> list:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=defects[name])) if name in defects
            else name for name in command_table()]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`genlip ARGV` in-process: (exit status, stdout, stderr); --help and --print_config exit through SystemExit."""
    capsys.readouterr()
    try:
        code = main(argv) or 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", _table_params(HELP_USAGE_DEFECTS))
def test_every_command_answers_help_with_its_own_usage(name, capsys):
    code, out, err = _run([name, "--help"], capsys)
    assert code == 0 and not err.strip(), err
    usage = next(line for line in out.splitlines() if line.strip())
    assert usage.startswith(f"usage: genlip {name} "), usage
    assert "--config" in out  # every command reads its options from YAML too


@pytest.mark.parametrize("name", list(command_table()))
def test_every_command_names_an_unknown_option_in_one_line_and_a_hint(name, capsys):
    code, out, err = _run([name, "--no-such-option", "1"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and "usage:" not in err, err
    assert lines == ["genlip: error: --no-such-option: not an option",
                     f"`genlip {name} --help` lists the options; `--print_config` shows the merged config"], lines


@pytest.mark.parametrize("name", list(command_table()))
def test_every_command_prints_its_merged_config_as_yaml(name, capsys):
    import yaml

    code, out, err = _run([name, "--print_config"], capsys)
    assert code == 0 and "Traceback" not in err, err
    config = yaml.safe_load(out)
    assert isinstance(config, dict) and config, out
    if target_is_lightning(name):  # a LightningCLI run: the sections of a fit config
        assert {"model", "data", "trainer"} <= set(config), sorted(config)
    else:  # a project parser: its options, each printed (a config file written from it sets them all)
        from jsonargparse import ActionConfigFile

        parser = _project_module(name).build_parser()
        options = {action.dest for action in parser._actions  # less the options-file flag (plan's is --options)
                   if action.dest not in ("help", "print_config") and not isinstance(action, ActionConfigFile)}
        assert options <= set(config), sorted(options - set(config))


def target_is_lightning(name: str) -> bool:
    """Whether the command is a LightningCLI run (fit's four, probe-full) rather than a commands/common.py parser."""
    return not hasattr(_project_module(name), "build_parser")


def _project_module(name: str):
    import importlib

    return importlib.import_module(command_table()[name][0].partition(":")[0])
