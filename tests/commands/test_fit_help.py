"""`genlip fit --help`: the project's model and data keys first (defaults, one-line meanings), under 200 lines;
Lightning's complete help with `--help full`; short class names for `--model.help` / `--data.help`."""

from __future__ import annotations

import inspect
import os

import pytest
from helpers import REPO

from genlip_lit.cli import main
from genlip_lit.commands.fit_help import DATA_KEYS, expand_help_names, merged_configs, short_help
from genlip_lit.data.datamodule import GenLIPDataModule


def _rows(text: str) -> dict[str, str]:
    """key -> its line, for the indented key rows of the page."""
    return {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}


def test_every_data_argument_has_a_meaning() -> None:
    params = [n for n in inspect.signature(GenLIPDataModule.__init__).parameters if n != "self"]
    assert sorted(params) == sorted(DATA_KEYS) and all(DATA_KEYS.values())


def test_fit_help_lists_model_and_data_keys_with_defaults(capsys) -> None:
    os.chdir(REPO)
    assert main(["fit", "--help"]) in (0, None)
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 200
    rows = _rows(text)
    assert rows["arch"].split()[1] == "tiny" and "preset name" in rows["arch"]
    assert rows["data_dir"].split()[1] == "null" and "genlip optimize" in rows["data_dir"]
    assert rows["lr"].split()[1] == "0.001" and "peak learning rate" in rows["lr"]  # the shared training keys
    assert "e.g. {" in rows["arch_overrides"]  # a meaning is not cut at "e.g."
    assert "--help full" in text and "--threads auto|N|0" in text


def test_fit_help_takes_its_values_from_the_config() -> None:
    os.chdir(REPO)
    config = merged_configs(["fit", "--config", "experiments/quickstart.yaml", "--config",
                             "experiments/corpus_cpu.yaml"])
    rows = _rows(short_help(config))
    assert rows["max_text_len"].split()[1] == "64" and rows["batch_size"].split()[1] == "8"
    assert rows["trainer.max_steps"].split()[1] == str(config["trainer"]["max_steps"])
    assert rows["trainer.devices"].split()[1] == "1"


def test_short_class_names_for_model_and_data_help(capsys) -> None:
    assert expand_help_names(["fit", "--model.help", "GenLIPModule", "--data.help=GenLIPDataModule"]) == [
        "fit", "--model.help", "genlip_lit.modules.genlip.GenLIPModule",
        "--data.help=genlip_lit.data.datamodule.GenLIPDataModule"]
    assert expand_help_names(["--model.help", "my.pkg.Module"]) == ["--model.help", "my.pkg.Module"]
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model.help", "ContrastiveModule"])
    assert info.value.code == 0
    assert "--model.loss LOSS" in capsys.readouterr().out  # ContrastiveModule's own key


@pytest.mark.parametrize(("command", "loop"), [("validate", "validation"), ("test", "test"), ("predict", "predict")])
def test_each_lightning_command_says_what_it_does(command, loop, capsys) -> None:
    assert main([command, "--help"]) in (0, None)
    lead = capsys.readouterr().out.splitlines()[2]
    assert lead.startswith(f"Runs the {loop} loop") and "--ckpt_path" in lead, lead


def test_every_probe_full_argument_has_a_meaning() -> None:
    from genlip_lit.commands.fit_help import model_keys
    from genlip_lit.studies.probe_data import ProbeDataModule
    from genlip_lit.studies.probe_module import StreamedProbe

    for cls in (StreamedProbe, ProbeDataModule):
        missing = [key for key, _, meaning in model_keys(cls) if not meaning]
        assert not missing, f"{cls.__name__}: no meaning for {missing}"


def test_probe_full_help_lists_its_keys_with_the_config_values(capsys) -> None:
    os.chdir(REPO)
    assert main(["probe-full", "--help", "--config", "experiments/probe_imagenet.yaml"]) in (0, None)
    text = capsys.readouterr().out
    assert text.startswith("usage: genlip probe-full --config FILE") and len(text.splitlines()) < 80
    rows = _rows(text)
    assert rows["encoder"].split()[1] == "runs/so16" and "checkpoint" in rows["encoder"]
    assert rows["data"].split()[1] == "data/in1k" and rows["batch_size"].split()[1] == "1024"
    assert rows["trainer.max_epochs"].split()[1] == "20"
    assert "--help full" in text


def test_help_request_tells_the_short_page_from_lightnings_full_help() -> None:
    from genlip_lit.commands.fit_help import help_request

    assert help_request(["fit", "--config", "a.yaml"]) == (None, ["fit", "--config", "a.yaml"])
    assert help_request(["fit", "-h", "--config", "a.yaml"]) == ("short", ["fit", "-h", "--config", "a.yaml"])
    assert help_request(["--help", "full", "--config", "a.yaml"]) == ("full", ["--help", "--config", "a.yaml"])
