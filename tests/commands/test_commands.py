"""The project commands' shared convention (commands/common.py): jsonargparse parsers with --config and
--print_config for every command, the same option names, repeatable multi-value flags, no Lightning to parse."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import yaml

from genlip_lit.cli import EXTRA_COMMANDS, command_table, main
from genlip_lit.commands.common import merge_repeated
from genlip_lit.errors import GenLIPUserError

MINE = ["caption", "caption-eval", "eval", "probe", "eval-res", "compare", "export", "llm-probe"]


def _module(name: str):
    path = EXTRA_COMMANDS[name][0].partition(":")[0]
    assert path.startswith("genlip_lit.commands."), name
    return importlib.import_module(path)


def test_repeated_multi_value_flags_merge() -> None:
    argv = ["--ckpt", "a", "--name", "x", "--ckpt=b", "c", "--output", "o", "--name", "y"]
    assert merge_repeated(argv, ["--ckpt", "--name"]) == ["--ckpt", "a", "b", "c", "--name", "x", "y", "--output", "o"]
    assert merge_repeated(["--ckpt", "a", "b"], ["--ckpt"]) == ["--ckpt", "a", "b"]


@pytest.mark.parametrize("name", MINE)
def test_every_command_prints_its_config_with_the_shared_names(name, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--print_config"])
    assert info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    for option in ("ckpt", "device", "threads", "output"):
        applies = {"ckpt": name not in ("compare", "llm-probe"), "device": name not in ("compare", "export"),
                   "threads": name not in ("compare", "export"), "output": True}[option]
        assert (option in config) == applies, (name, option)
    if "device" in config:
        assert config["device"] == "auto"  # the same default everywhere


# every command of cli's table built on commands/common.py's parser (not LightningCLI's): a new one needs no edit
PARSER_COMMANDS = [name for name, (target, _) in command_table().items()
                   if hasattr(importlib.import_module(target.partition(":")[0]), "build_parser")]


def test_the_parser_commands_are_every_command_but_lightnings() -> None:
    assert set(PARSER_COMMANDS) == set(EXTRA_COMMANDS) - {"probe-full"}  # probe-full is a LightningCLI run


@pytest.mark.parametrize("name", PARSER_COMMANDS)
def test_parsing_a_command_does_not_import_lightning(name) -> None:
    code = (f"import sys, importlib; m = importlib.import_module({_module(name).__name__!r}); m.build_parser(); "
            "print('lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_config_file_sets_a_commands_options(tmp_path, capsys) -> None:
    config = tmp_path / "res.yaml"
    config.write_text(yaml.safe_dump({"ckpt": ["a.ckpt", "b.ckpt"], "name": ["one", "two"], "output": "out",
                                      "num_scenes": 0}))
    with pytest.raises(GenLIPUserError, match="--num-scenes must be at least 1, got 0"):
        _module("eval-res").main(["--config", str(config)])
    with pytest.raises(SystemExit):
        main(["eval-res", "--config", str(config), "--num-scenes", "5", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ckpt"] == ["a.ckpt", "b.ckpt"] and printed["num_scenes"] == 5  # flags after it win


def test_a_run_directory_is_a_checkpoint_everywhere(tmp_path) -> None:
    from genlip_lit.commands.common import resolve_ckpt

    newest = tmp_path / "run" / "version_1" / "checkpoints" / "last.ckpt"
    newest.parent.mkdir(parents=True)
    newest.write_bytes(b"x")
    assert resolve_ckpt(str(tmp_path / "run")) == str(newest)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenLIPUserError, match="no last.ckpt under"):
        resolve_ckpt(str(tmp_path / "empty"))


@pytest.mark.parametrize("name", ["optimize", "plan", "import"])
def test_the_other_commands_print_their_config_with_the_required_options(name, capsys) -> None:
    required = {"optimize": ["--output", "o"], "plan": ["--config", "a.yaml"], "import": ["src", "--output", "o"]}
    with pytest.raises(SystemExit) as info:
        main([name, *required[name], "--print_config"])
    assert info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert "output" in config if name != "plan" else config["config"] == ["a.yaml"]
