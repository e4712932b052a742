"""The `genlip` command: one table of subcommands, each imported only when it runs.

    genlip                                   # every command with a one-line description (also --help, a typo)
    genlip --version
    genlip fit --config experiments/quickstart.yaml
    genlip -q fit --config experiments/quickstart.yaml     # -q: warnings only; -v: debug lines and tracebacks
    genlip optimize --source synthetic --output data/scenes --num-samples 20000
    genlip caption --ckpt runs/quickstart scene.png photos/

`fit | validate | test | predict` go through LightningCLI (`genlip_lit/commands/fit.py`: model and data are
class_path plug-ins; several `--config` files compose, later ones win). Every other command lives in
`genlip_lit/commands/` (one file each, parsed by jsonargparse: `--config FILE` and `--print_config` for every
one), a function `main(argv) -> int | None`. This module imports neither torch nor Lightning, so `genlip
--help` and a command's `--help` start fast; a command imports what it needs when it runs.

Conventions every command keeps: results on stdout, messages and progress on stderr (`genlip: ...` lines,
`genlip_lit/console/logs.py`, `genlip_lit/console/progress.py`); a user mistake is one `genlip: error: ...` line naming the key,
file or value, with exit code 2; `-v`/`-q` before or after the command name.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable

from genlip_lit.console import logs
from genlip_lit.errors import GenLIPRunError, GenLIPUserError, user_message

# The Trainer entry points, run by LightningCLI (`genlip_lit.commands.fit:main` receives the command name too).
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a model from YAML configs (any key can be overridden as --section.key VALUE)",
    "validate": "run the validation loop of a config on a checkpoint (--ckpt_path)",
    "test": "run the test loop of a config on a checkpoint (--ckpt_path)",
    "predict": "run the predict loop of a config on a checkpoint (--ckpt_path)",
}
LIGHTNING_ENTRY = "genlip_lit.commands.fit:main"

# Project commands: name -> (entry point, one-line description), the entry point a "package.module:function"
# string imported only when the command runs. The function takes the arguments after the command name and returns
# an exit code (None = 0). Register a command with one line here.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "optimize": ("genlip_lit.commands.optimize:main", "turn images with captions (or synthetic scenes) into litdata shards"),
    "caption": ("genlip_lit.commands.caption:main", "caption image files, folders and globs with a checkpoint (bad files skipped)"),
    "caption-eval": ("genlip_lit.commands.caption_eval:main", "score captions of held-out synthetic scenes"),
    "eval": ("genlip_lit.commands.eval:main", "run the configured evaluations on a checkpoint; write a report"),
    "probe": ("genlip_lit.commands.probe:main", "linear and attentive probes of frozen features on an image folder"),
    "probe-full": ("genlip_lit.commands.probe_full:main", "the probe over a whole labelled set (ImageNet protocol) as a Lightning run"),
    "compare": ("genlip_lit.commands.compare:main", "train several configs and compare their evaluations in one table"),
    "export": ("genlip_lit.commands.export:main", "write a checkpoint's vision encoder: safetensors + config, a timm form, a model card"),
    "eval-res": ("genlip_lit.commands.eval_res:main", "evaluate checkpoints at several input resolutions"),
    "llm-probe": ("genlip_lit.commands.llm_probe:main", "rate vision encoders by a frozen LM's caption perplexity"),
    "plan": ("genlip_lit.commands.plan:main", "estimate FLOPs, memory per GPU and cost of a config before running it"),
    "import": ("genlip_lit.commands.import_checkpoint:main", "convert a released GenLIP checkpoint (official or open_clip) into a genlip checkpoint"),
}

VERBOSE_FLAGS = {"-v": 1, "--verbose": 1, "-vv": 2, "-q": -1, "--quiet": -1, "-qq": -2}
EXIT_USAGE = 2  # a user mistake, as argparse and jsonargparse use it


def command_table() -> dict[str, tuple[str, str]]:
    """Every command: name -> (entry point "package.module:function", description), Lightning's first."""
    table = {name: (LIGHTNING_ENTRY, text) for name, text in LIGHTNING_COMMANDS.items()}
    for name, entry in EXTRA_COMMANDS.items():
        # a bare entry-point string (a registration without a description) still runs, described by ""
        table[name] = (entry, "") if isinstance(entry, str) else (entry[0], entry[1])
    return table


def version() -> str:
    """The installed distribution's version, or the package's own when it runs from a source tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("genlip_lit")
    except PackageNotFoundError:
        from genlip_lit import __version__

        return __version__


def overview() -> str:
    """`genlip --help`: usage, the global options and every command with its description."""
    table = command_table()
    width = max(len(name) for name in table) + 2
    lines = [
        "usage: genlip [-h] [--version] [-v | -q] COMMAND [ARGS...]",
        "",
        "GenLIP (generative language-image pretraining) as a Lightning experiment framework.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}{text}" for name, (_, text) in table.items()]
    lines += [
        "",
        "options:",
        "  -h, --help     show this list; `genlip COMMAND --help` shows a command's options",
        "  --version      print the version",
        "  -v, --verbose  also debug lines, and tracebacks of errors (before or after COMMAND)",
        "  -q, --quiet    warnings and errors only (before or after COMMAND)",
        "",
        "Every command takes --help. Results go to stdout; messages and progress to stderr.",
    ]
    return "\n".join(lines)


def _load(target: str) -> Callable[[list[str]], int | None]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _split_verbosity(argv: list[str]) -> tuple[int, list[str]]:
    """Take -v/-q (anywhere before a `--`) out of the arguments; return (verbosity, the rest)."""
    level, rest = 0, []
    for i, arg in enumerate(argv):
        if arg == "--":
            rest += argv[i:]
            break
        if arg in VERBOSE_FLAGS:
            level += VERBOSE_FLAGS[arg]
        else:
            rest.append(arg)
    return level, rest


def _usage_error(message: str) -> int:
    print(f"genlip: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _unknown_command(name: str) -> int:
    close = difflib.get_close_matches(name, list(command_table()), n=1, cutoff=0.5)
    hint = f"; did you mean `genlip {close[0]}`?" if close else ""
    print(overview(), file=sys.stderr)
    print(f"\ngenlip: error: unknown command {name!r}{hint}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `genlip` console script; tests call it in-process with an argument list.

    Returns the exit code for `genlip` and for commands that return one; user errors raise SystemExit(2) after
    one `genlip: error: ...` line (so in-process callers see the same exit code as the shell).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    level, argv = _split_verbosity(argv)
    logs.configure(level)

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"genlip {version()}")
        return 0
    name, args = argv[0], argv[1:]
    if name.startswith("-"):
        return _usage_error(f"unknown option {name!r} (options go after the command; see `genlip --help`)")
    table = command_table()
    if name not in table:
        return _unknown_command(name)

    target, _ = table[name]
    try:
        if name in LIGHTNING_COMMANDS:
            return _load(target)([name, *args]) or 0
        return _load(target)(args) or 0
    except GenLIPUserError as err:
        # A user-fixable problem: one line naming the culprit, no traceback (-v adds it).
        if logs.verbosity() >= 1:
            import traceback

            traceback.print_exc()
        print(f"genlip: error: {user_message(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except GenLIPRunError as err:
        if logs.verbosity() >= 1:
            import traceback

            traceback.print_exc()
        print(f"genlip: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("genlip: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    sys.exit(main())
