"""What every `genlip` project command shares: one parser convention, checkpoints, devices, threads, output.

Every command parses with jsonargparse (the library LightningCLI uses), so each one takes `--config FILE` (a YAML
of its options; flags after it win) and `--print_config`, and shows typed options with their defaults in
`--help`. The same things have the same names everywhere:

    --ckpt FILE|RUN_DIR     a checkpoint, or a run directory (its newest last.ckpt)
    --device auto|cpu|cuda  auto = CUDA when available (also cuda:N)
    --threads N             torch CPU threads (0 = torch's choice)
    --seed N                the random stream a command draws from
    --output DIR            where a command writes its files (--overwrite: into a folder it did not write)

Options that take several values (`--ckpt A B`) may also be repeated (`--ckpt A --ckpt B`). Heavy modules (torch,
Lightning, the model code) are imported inside functions, so `genlip caption --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from genlip_lit.errors import GenLIPUserError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def command_parser(name: str, description: str, config_flag: str = "--config", **kwargs: Any) -> Any:
    """A jsonargparse parser for `genlip NAME` with `--config` (and jsonargparse's `--print_config`).

    Parse errors raise (see `parse`) instead of printing a usage block. `config_flag`: the flag of the options
    file, for a command whose `--config` already means something else (`genlip plan`: the fit config it plans).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    kwargs.setdefault("exit_on_error", False)
    kwargs["allow_abbrev"] = False  # a prefix of an option is an unknown option (with did-you-mean), never the option
    parser = ArgumentParser(prog=f"genlip {name}", description=description, default_env=False, **kwargs)
    parser.add_argument(config_flag, action=ActionConfigFile, help="a YAML file of these options (keys as "
                        "--print_config writes them); flags given after it win")
    parser.genlip_config_flag = config_flag
    return parser


def add_ckpt(parser: Any, many: bool = False, help: str = "") -> None:
    text = help or "a checkpoint written by `genlip fit`, or a run directory (its newest last.ckpt)"
    if many:
        parser.add_argument("--ckpt", nargs="+", type=str, required=True, help=f"{text}; several: --ckpt A B")
    else:
        parser.add_argument("--ckpt", type=str, required=True, help=text)


def add_device(parser: Any) -> None:
    parser.add_argument("--device", type=str, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def add_threads(parser: Any) -> None:
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice); 1 is often "
                        "faster on a busy shared machine")


def add_output(parser: Any, required: bool = True, help: str = "output directory") -> None:
    """`--output DIR` and `--overwrite`: a non-empty DIR this command did not write is refused without it
    (commands/output.py has the rules, `claim_output` / `staged_output` apply them)."""
    from genlip_lit.commands.output import add_overwrite

    if required:
        parser.add_argument("--output", type=str, required=True, help=help)
    else:
        parser.add_argument("--output", type=str, default=None, help=help)
    add_overwrite(parser)


def merge_repeated(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """`--ckpt A --name x --ckpt B` -> `--ckpt A B --name x` for multi-value flags (argparse keeps only the last)."""
    out: list[str] = []
    values: dict[str, list[str]] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        flag, eq, inline = token.partition("=")
        if flag in flags:
            first = flag not in values
            collected = values.setdefault(flag, [])
            if eq:
                collected.append(inline)
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                collected.append(argv[i])
                i += 1
            if first:
                out.append(flag)  # placeholder: the merged values go here
            continue
        out.append(token)
        i += 1
    merged: list[str] = []
    for token in out:
        merged.append(token)
        if token in values:
            merged += values[token]
    return merged


def parse(parser: Any, argv: Sequence[str] | None, repeatable: Sequence[str] = ()) -> Any:
    """Parse `argv` (None: sys.argv[2:]-style callers pass their own) after merging repeated multi-value flags.

    A mistake (unknown option or config key, wrong type, unreadable config file) raises GenLIPUserError with at
    most a few lines naming the key, value or file (parse_errors.py), instead of jsonargparse's usage block.
    """
    import sys
    from argparse import ArgumentError

    args = list(sys.argv[2:] if argv is None else argv)
    flag = getattr(parser, "genlip_config_flag", "--config")
    files = config_files(args, flag)
    for path in files:
        check_config_file(path, flag)
    try:
        return parser.parse_args(merge_repeated(args, repeatable))
    except ArgumentError as err:
        raise GenLIPUserError(short_error(str(err), parser, files, args)) from None


def short_error(message: str, parser: Any, files: Sequence[str] = (), argv: Sequence[str] = ()) -> str:
    """jsonargparse's message cut to `key: problem` + a hint; a bad key read from a config file names the file,
    a bad value typed as a flag names the flag."""
    from genlip_lit.commands.parse_errors import short_parse_error

    command = parser.prog.removeprefix("genlip ")
    # flags (`--max-steps`) and config keys (`--max_steps`) to suggest from; not the negations of yes/no flags
    options = [o for action in parser._actions for o in [*action.option_strings, f"--{action.dest}"]
               if not o.startswith("--no_")]
    text = short_parse_error(message, command=command, options=options)
    key = text.split(":", 1)[0]
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    flag = next((f for f in (f"--{key}", f"--{key.replace('_', '-')}") if f in typed), None)
    if flag is not None and " " not in key:
        return flag + text[len(key):]
    if files and not key.startswith("-"):  # a key, not a flag: it came from a config file
        named = [path for path in files if _top_keys(path) & {key, key.replace("_", "-")}]
        if named:
            text = f"{named[-1]}: {text}"
    return text


def config_files(argv: Sequence[str], flag: str = "--config") -> list[str]:
    """The files given as `--config FILE` / `--config=FILE` (inline YAML `{...}` is left to jsonargparse)."""
    files = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith(flag + "="):
            path = arg.split("=", 1)[1]
        else:
            continue
        if not path.lstrip().startswith("{"):
            files.append(path)
    return files


def check_config_file(path: str, flag: str = "--config") -> None:
    """A config file exists and is YAML; else one line naming the file (and the line of a YAML error)."""
    import yaml

    if not os.path.isfile(path):
        raise GenLIPUserError(f"{flag} {path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            yaml.safe_load(fh)
    except OSError as err:
        raise GenLIPUserError(f"{flag} {path}: cannot read it ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise GenLIPUserError(f"{flag} {path}: not valid YAML: {problem}{where}") from None


def _top_keys(path: str) -> set[str]:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def resolve_ckpt(path: str) -> str:
    """A checkpoint file, or for a run directory its newest last.ckpt; a missing one is a user error."""
    from genlip_lit.checkpoints.loading import resolve_checkpoint

    return resolve_checkpoint(path)


def device(name: str) -> Any:
    """The torch device of a `--device` value."""
    from genlip_lit.eval.data import resolve_device

    if not _DEVICE.match(str(name)):
        raise GenLIPUserError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    return resolve_device(name)


def load_module(ckpt: str, device_name: str = "auto") -> tuple[Any, Any, dict[str, Any]]:
    """(module in eval mode on the device, its `Preprocessing`, the data module's hyper-parameters)."""
    from genlip_lit.checkpoints.loading import load_checkpoint
    from genlip_lit.data.transforms import Preprocessing

    module, data_hparams = load_checkpoint(resolve_ckpt(ckpt), device(device_name))
    return module, Preprocessing.from_hparams(data_hparams), data_hparams


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """A command's --threads: torch CPU threads for the block (0 = leave torch's choice); restored after, so
    in-process callers (tests) keep their setting. On a shared machine 1 thread can beat 2 competing ones."""
    import torch

    if count < 0:
        raise GenLIPUserError(f"--threads must be >= 0 (0 = torch's choice), got {count}")
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def at_least(flag: str, value: int | None, low: int) -> None:
    """A numeric option's lower bound, as a one-line user error."""
    if value is not None and value < low:
        raise GenLIPUserError(f"{flag} must be at least {low}, got {value}")


def beside_checkpoint(ckpt: str, name: str) -> str:
    """A default output directory next to a checkpoint file (e.g. eval/ beside last.ckpt); for a checkpoint in
    object storage, `name` in the working directory (reports are written locally)."""
    from genlip_lit.storage.paths import is_remote

    if is_remote(ckpt):
        return os.path.abspath(name)
    return os.path.join(os.path.dirname(os.path.abspath(ckpt)), name)
