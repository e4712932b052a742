"""`genlip fit | validate | test | predict`: LightningCLI with the project's defaults and short user errors.

    genlip fit --config experiments/quickstart.yaml --trainer.max_steps 100
    genlip fit --config experiments/quickstart.yaml --print_config      # the merged config, nothing run

Imported only for these four commands (it pulls in torch and Lightning). What it adds to LightningCLI:
- defaults: TensorBoard under runs/, a `checkpoint.*` ResumableCheckpoint, and a progress display chosen by the
  output (RichProgressBar on a terminal, PlainProgressBar's periodic lines in a log file, none under `-q`);
- short errors: a bad key, type, class path or value, a missing checkpoint, an unwritable directory or
  unreadable data is one `genlip: error: ...` line naming the culprit (`parse_errors.py` rewrites jsonargparse's
  messages; exceptions raised while building the model, data or trainer are unwrapped to their cause);
- `--optimizer`/`--lr_scheduler` are refused: the modules build AdamW with their own no-decay parameter groups
  and warmup-cosine schedule, which LightningCLI's automatic optimizer would silently replace;
- `None` on the command line means null, as `null` does (jsonargparse re-reads nested class arguments, e.g.
  `--model.init_args.tokenizer.init_args.compact_corpus=null`, from their printed form, where null is `None`);
- a fit that finishes ends with one line (rank 0) naming its checkpoint and the commands that use it:
      genlip: done. checkpoint: runs/quickstart/version_3/checkpoints/last.ckpt. next: genlip caption --ckpt
      runs/quickstart/version_3 IMAGE | genlip eval --ckpt runs/quickstart/version_3 --config experiments/eval.yaml
      | genlip export --ckpt runs/quickstart/version_3 --output DIR
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
from argparse import ArgumentError
from typing import Any, Literal, NoReturn

import yaml
from jsonargparse import get_loader, set_loader
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from genlip_lit.callbacks.checkpoint import ResumableCheckpoint
from genlip_lit.callbacks.plain_progress import PlainProgressBar
from genlip_lit.callbacks.process_group import ProcessGroupGuard
from genlip_lit.callbacks.threads import AdaptiveThreads
from genlip_lit.commands.parse_errors import OPTIMIZER_REFUSAL, is_optimizer_flag, short_parse_error
from genlip_lit.console import logs
from genlip_lit.errors import GenLIPRunError, GenLIPUserError
from genlip_lit.modules.base import EncoderModule
from genlip_lit.storage import paths as storage

log = logging.getLogger(__name__)

# Values of --ckpt_path that Lightning resolves itself (not file names).
CKPT_KEYWORDS = {"last", "best", "hpc", "registry"}


class GenLIPArgumentParser(LightningArgumentParser):
    """Parse errors come back as exceptions (shortened by `main`) instead of a usage block and an exit; no
    abbreviated options (argparse's allow_abbrev would take `--trainer.max_step` for `--trainer.max_steps`: a
    typo must be an unknown option with its did-you-mean line, never silently another option)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exit_on_error", False)
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        try:
            super().error(message, ex)
        except ArgumentError as err:
            # the parser that complained knows the option names: `main` suggests the closest to a typo
            parser = getattr(ex, "subcommand_parser", None) or self
            err.genlip_options = _option_names(parser)  # type: ignore[attr-defined]
            raise
        raise AssertionError("unreachable: exit_on_error=False makes jsonargparse raise")  # pragma: no cover


def _option_names(parser: Any) -> list[str]:
    """`--trainer.max_steps`, ... of a parser and of its subcommands' parsers."""
    names = []
    for action in parser._actions:
        names += action.option_strings
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):  # the subcommands action: name -> parser
            for sub in choices.values():
                names += _option_names(sub) if hasattr(sub, "_actions") else []
    return names


class GenLIPCLI(LightningCLI):
    """LightningCLI with the project's defaults: TensorBoard under runs/, a progress display, a checkpoint."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always present and configurable as `checkpoint.*` in YAML; `last.ckpt` is what `genlip caption` reads.
        # ResumableCheckpoint also saves the step where max_steps stops, so a resume loses no work.
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "{step}"})
        # the project commands' --threads, plus `auto`: follow the cores other processes leave free
        parser.add_argument("--threads", type=int | Literal["auto"], default="auto",
                            help="torch CPU threads: auto (the cores other processes leave free, re-checked every "
                            "5 s: 1 beside a busy process on 2 cores), N, or 0 (torch's choice)")
        # `distributed.timeout`: how long a collective waits for the other ranks (callbacks/process_group.py)
        parser.add_lightning_class_args(ProcessGroupGuard, "distributed")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, list):
            args = merge_synthetic_blocks(args)
        super().parse_arguments(parser, args)
        # A missing --ckpt_path fails here, before the model is built, instead of deep inside fit.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and path not in CKPT_KEYWORDS and not storage.isfile(path):  # local or s3://... (one line)
            raise GenLIPUserError(f"checkpoint not found: {path} (--ckpt_path)")

    def _parse_ckpt_path(self) -> None:
        # `--ckpt_path`: read weights-only, and the module class it names must be genlip_lit's (or this config's)
        # BEFORE LightningCLI imports it and merges the file's hyper-parameters (checkpoints/loading.py).
        from genlip_lit.checkpoints.loading import check_resume_checkpoint

        check_resume_checkpoint(self.config)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        self._adaptive_threads = apply_threads(config.get("threads", 0))
        runs_in_object_storage(config)
        check_output_dirs(config)
        check_accelerator(config)
        check_data_dirs(config)  # before the model (and a compact vocabulary read from data_dir) is built
        fill_data_corpus(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except GenLIPUserError:
            raise
        except Exception as err:  # noqa: BLE001 - unwrapped to a user error or re-raised as is
            message = instantiation_error(err)
            if message is None:
                raise
            raise GenLIPUserError(message) from err
        if getattr(self.datamodule, "resolution", "fixed") == "native" and isinstance(self.model, EncoderModule) \
                and not self.model.trains_packed:
            from genlip_lit.modules.base import packed_refusal

            raise GenLIPUserError(packed_refusal(type(self.model)))  # before any data is prepared
        # The one handshake: the model's settings (text format, patch size, registers) go to the data.
        connect = getattr(self.datamodule, "connect", None)
        if callable(connect) and isinstance(self.model, EncoderModule):
            connect(**self.model.data_settings())

    def after_fit(self) -> None:
        # LightningCLI calls it when trainer.fit returned (a crash, a user error or Ctrl-C never get here)
        if self.trainer.is_global_zero:
            log.info("%s", end_of_fit_line(self.trainer))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as err:  # a Trainer argument it refused
            if isinstance(err, GenLIPUserError):
                raise
            raise GenLIPUserError(f"trainer: {str(err).strip().splitlines()[0]}") from err
        for callback in trainer.callbacks:  # the process group does not exist yet: its timeout can still be set
            if isinstance(callback, ProcessGroupGuard):
                callback.apply_to(trainer.strategy)
        return trainer

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if str(config.get("accelerator")) == "cpu":
            logs.mute_gpu_unused_warning()  # a CPU run chosen on purpose
        if getattr(self, "_adaptive_threads", False):
            callbacks = [*callbacks, AdaptiveThreads()]
        configured = list(config.get("callbacks") or []) + callbacks
        if config.get("enable_model_summary", True) is not False and not any(
                isinstance(c, ModelSummary) for c in configured):
            # the plain summary, logged (Lightning's rich one prints "Total FLOPs: 0" past the log filter that
            # drops that line: logs._NoZeroFlops)
            callbacks = [*callbacks, ModelSummary()]
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in configured
        ):
            if logs.verbosity() < 0:
                config["enable_progress_bar"] = False  # -q: warnings and errors only
            else:
                callbacks = [*callbacks, default_progress_bar()]
        return super()._instantiate_trainer(config, callbacks)


def _shown(path: str) -> str:
    """A path as the user should type it: relative to the working directory when below it, quoted if needed."""
    relative = os.path.relpath(path)
    return shlex.quote(path if relative.startswith("..") else relative)


def end_of_fit_line(trainer: Trainer) -> str:
    """`done. checkpoint: FILE. next: genlip caption --ckpt RUN IMAGE | genlip eval ... | genlip export ...`.

    RUN is the run directory (the folder above checkpoints/): every command reads its newest last.ckpt, so no
    one types a version number.
    """
    callback = trainer.checkpoint_callback
    ckpt = ""
    if callback is not None:
        ckpt = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    if not ckpt or not storage.isfile(ckpt):
        return "done (no checkpoint was written: set checkpoint.save_last: true to keep one)"
    if storage.is_remote(ckpt):  # in object storage: the URL as it is (every command takes it)
        folder = ckpt.rsplit("/", 1)[0]
        run = folder.rsplit("/", 1)[0] if folder.endswith("/checkpoints") else folder
        target = run if ckpt.endswith("/last.ckpt") else ckpt
        return (f"done. checkpoint: {ckpt}. next: genlip caption --ckpt {target} IMAGE | "
                f"genlip eval --ckpt {target} --config experiments/eval.yaml | "
                f"genlip export --ckpt {target} --output DIR")
    folder = os.path.dirname(os.path.abspath(ckpt))
    run = os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else folder
    target = _shown(run) if os.path.basename(ckpt) == "last.ckpt" else _shown(ckpt)
    return (f"done. checkpoint: {_shown(ckpt)}. next: genlip caption --ckpt {target} IMAGE | "
            f"genlip eval --ckpt {target} --config experiments/eval.yaml | "
            f"genlip export --ckpt {target} --output DIR")


def default_progress_bar() -> ProgressBar:
    """Rich bars on a terminal; plain periodic lines when stderr is a file or a pipe (CI, nohup, tee)."""
    from genlip_lit.console.progress import resolve_mode

    if resolve_mode() == "rich":
        return RichProgressBar(console_kwargs={"stderr": True})
    return PlainProgressBar()


def instantiation_error(err: BaseException) -> str | None:
    """One line for an exception raised while building the model, data or trainer; None if it is not the user's.

    jsonargparse wraps what a constructor raised in a long union error; the constructor's own exception is at the
    root of the `__cause__`/`__context__` chain. GenLIPUserError speaks for itself; a ValueError (a value a
    constructor refused) or Lightning's MisconfigurationException is named with the class that refused it.
    """
    chain, seen = [], set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        chain.append(node)
        node = node.__cause__ or node.__context__
    for exc in chain:
        if isinstance(exc, GenLIPUserError):
            return str(exc)
    root = chain[-1]
    if isinstance(root, MisconfigurationException):
        return f"trainer: {root}"
    if isinstance(root, OSError) and root.filename:
        return os_error(root)
    if isinstance(root, ValueError):
        text = str(root)
        if "Does not validate against any of the Union subtypes" in text:
            return short_parse_error(text)
        match = re.search(r"class_path='([\w.]+)'", str(err))
        where = f"{match.group(1)}: " if match else ""
        first = text.strip().splitlines()[0] if text.strip() else type(root).__name__
        return f"{where}{first}"
    return None


def runs_in_object_storage(config: Any) -> None:
    """`--trainer.default_root_dir s3://bucket/runs` puts the run there: loggers whose save_dir is a local path
    (the recipes' `runs`) log into the URL instead, and their checkpoints/ follow (Lightning places them under the
    first logger's directory). Without this the logger's local save_dir would win and the URL would hold
    nothing. The bucket must answer now: a missing bucket or credentials is one line before the model is built."""
    trainer = config.get("trainer") or {}
    root = trainer.get("default_root_dir")
    if not isinstance(root, str) or not storage.is_remote(root):
        return
    storage.check_bucket(root)
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        save_dir = init_args.get("save_dir") if hasattr(init_args, "get") else None
        if isinstance(save_dir, str) and not storage.is_remote(save_dir):
            log.info("trainer.default_root_dir %s: the logger writes there (instead of its save_dir %s)",
                     root, save_dir)
            init_args["save_dir"] = root


def check_output_dirs(config: Any) -> None:
    """The run's log and checkpoint directories can be created: else one line naming the key (not a traceback
    from the logger halfway through setup)."""
    trainer = config.get("trainer") or {}
    candidates = [("trainer.default_root_dir", trainer.get("default_root_dir"))]
    loggers = trainer.get("logger")
    for i, logger in enumerate(loggers if isinstance(loggers, list) else [loggers]):
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        save_dir = init_args.get("save_dir") if hasattr(init_args, "get") else None
        key = "trainer.logger.init_args.save_dir" if not isinstance(loggers, list) else f"trainer.logger[{i}].save_dir"
        candidates.append((key, save_dir))
    checkpoint = config.get("checkpoint") or {}
    candidates.append(("checkpoint.dirpath", checkpoint.get("dirpath") if hasattr(checkpoint, "get") else None))
    for key, path in candidates:
        if not isinstance(path, str) or not path or "://" in path:
            continue
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as err:
            raise GenLIPUserError(f"{key}: cannot create {path} ({err.strerror or err})") from None
        if not os.access(path, os.W_OK):
            raise GenLIPUserError(f"{key}: {path} is not writable")


def apply_threads(value: int | str) -> bool:
    """`--threads`: N sets torch's CPU threads now, 0 leaves torch's choice; True for `auto` (a callback adapts
    them during training: callbacks/threads.py)."""
    if value == "auto":
        return True
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GenLIPUserError(f"--threads must be auto or an integer >= 0 (0 = torch's choice), got {value!r}")
    if value > 0:
        import torch

        torch.set_num_threads(value)
    return False


def check_accelerator(config: Any) -> None:
    """A GPU config on a machine without one fails before the model is built (a B/16 takes a while), naming the
    CPU configs."""
    accelerator = str((config.get("trainer") or {}).get("accelerator") or "auto")
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    if torch.cuda.is_available() or (accelerator == "gpu" and torch.backends.mps.is_available()):
        return
    raise GenLIPUserError(
        f"trainer.accelerator is {accelerator!r} but this machine has no GPU: on a CPU train your own data with "
        "experiments/corpus_cpu.yaml (or the embedded data with experiments/quickstart.yaml), or pass "
        "--trainer.accelerator cpu"
    )


SYNTHETIC_FLAG = "--data.init_args.synthetic"


def _synthetic_block(path: str) -> tuple[bool, Any]:
    """(whether the config file sets data's `synthetic`, its value)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            content = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return False, None  # named by check_config_files / the parser
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, dict):
        return False, None
    block = data.get("init_args") if isinstance(data.get("init_args"), dict) else data
    return ("synthetic" in block), block.get("synthetic")


def merge_synthetic_blocks(argv: list[str]) -> list[str]:
    """`data.init_args.synthetic` is a plain dict, which jsonargparse replaces whole when a later --config sets it:
    an overlay giving `{glyph_prob: 1.0}` would silently drop the world and every other key of the first config.
    Merge it key by key as every other config section merges (later files win per key; a file setting it null,
    or naming another `world`, starts afresh), passed as one `--data.init_args.synthetic=JSON` right after the
    last of those files, so command-line keys after it still apply."""
    import json

    files = []  # (index of the path in argv, path) of every config file, in the order jsonargparse applies them
    for i, arg in enumerate(argv):
        for flag in ("--config", "-c"):
            if arg == flag and i + 1 < len(argv):
                files.append((i + 1, argv[i + 1]))
            elif arg.startswith(flag + "="):
                files.append((i, arg.split("=", 1)[1]))
    merged: Any = None
    setters: list[int] = []
    for at, path in files:
        sets, value = _synthetic_block(path) if not path.lstrip().startswith("{") else (False, None)
        if not sets:
            continue
        setters.append(at)
        fresh = not isinstance(value, dict) or not isinstance(merged, dict) or \
            ("world" in value and (value["world"] or "shapes") != (merged.get("world") or "shapes"))
        merged = value if fresh else {**merged, **value}
    if len(setters) < 2 or not isinstance(merged, dict):
        return argv
    at = max(setters) + 1
    return [*argv[:at], f"{SYNTHETIC_FLAG}={json.dumps(merged)}", *argv[at:]]


def check_data_dirs(config: Any) -> None:
    """Each local `data.init_args.data_dir` holds `genlip optimize` train shards, undamaged; else one line naming
    it (as data_dir, or the damaged chunk / index.json), before anything slow starts: the model, a compact
    vocabulary read from the same directory (which jsonargparse would report as a config-parsing error)."""
    from genlip_lit.data.datamodule import data_dir_problem
    from genlip_lit.data.shard_check import check_shard_dir

    try:
        data_dir = config.get("data.init_args.data_dir") if config.get("data") else None
    except (KeyError, AttributeError, TypeError):
        return
    for d in [data_dir] if isinstance(data_dir, str) else list(data_dir or []):
        problem = data_dir_problem(str(d))
        if problem:
            raise GenLIPUserError(problem)
        check_shard_dir(str(d))


COMPACT_CORPUS_KEY = "model.init_args.tokenizer.init_args.compact_corpus"


def fill_data_corpus(config: Any) -> None:
    """`compact_corpus: data`: the compact vocabulary of the training corpus. The model (whose LM head the
    vocabulary sizes) is built before the data module, so the data_dir is put in its place here; the run's
    config.yaml then names it."""
    try:
        value = config.get(COMPACT_CORPUS_KEY)
    except (KeyError, AttributeError, TypeError):
        return
    from genlip_lit.data.caption_coverage import DATA_CORPUS

    if value != DATA_CORPUS:
        return
    data_dir = config.get("data.init_args.data_dir") if config.get("data") else None
    dirs = [data_dir] if isinstance(data_dir, str) else list(data_dir or [])
    if len(dirs) != 1:
        raise GenLIPUserError(
            f"{COMPACT_CORPUS_KEY}: data builds the vocabulary from one data.init_args.data_dir (a `genlip "
            f"optimize` output), got {data_dir!r}: set data_dir, or give compact_corpus a directory or null"
        )
    from genlip_lit.data.caption_coverage import is_shard_dir

    if storage.is_remote(dirs[0]) and not is_shard_dir(str(dirs[0])):  # before the vocabulary reads it
        raise GenLIPUserError(f"data_dir {dirs[0]} has no train/ litdata shards (no "
                              f"{storage.join(str(dirs[0]), 'train', 'index.json')}); write them with `genlip "
                              f"optimize --input SRC --output {dirs[0]}`")
    config[COMPACT_CORPUS_KEY] = str(dirs[0])


def os_error(err: OSError) -> str:
    """`cannot access runs/x: Permission denied` (the file or directory and the reason, nothing else)."""
    return f"cannot access {err.filename}: {err.strerror or err}"


def check_config_files(argv: list[str]) -> None:
    """Each `--config FILE` / `-c FILE` exists and is YAML; else one line naming the file (and the line of a YAML
    error): the same check as every project command's (commands/common.py)."""
    from genlip_lit.commands.common import check_config_file, config_files

    for flag in ("--config", "-c"):
        for path in config_files(argv, flag):
            check_config_file(path, flag)


def _null_on_command_line() -> None:
    """`None` typed on the command line is null, like `null` (see the module docstring); idempotent."""
    base = get_loader("yaml")
    if getattr(base, "_genlip_none_is_null", False):
        return

    def load(value: str) -> Any:
        return None if value.strip() == "None" else base(value)

    load._genlip_none_is_null = True  # type: ignore[attr-defined]
    set_loader("yaml", load, exceptions=(yaml.YAMLError,))


def main(argv: list[str]) -> int:
    """Run one LightningCLI command; `argv` starts with the command name (fit, validate, test, predict)."""
    logs.sync_library_levels()  # Lightning reset its loggers to INFO when imported; -q applies to them too
    if any(is_optimizer_flag(arg) for arg in argv):
        raise GenLIPUserError(OPTIMIZER_REFUSAL)
    check_config_files(argv)
    _null_on_command_line()
    command = argv[0] if argv else "fit"
    from genlip_lit.commands import fit_help

    wanted, argv = fit_help.help_request(argv)  # "full": Lightning's own, complete help
    if wanted == "short":
        print(fit_help.short_help(fit_help.merged_configs(argv), command))
        return 0
    argv = fit_help.expand_help_names(argv)
    try:
        GenLIPCLI(
            model_class=EncoderModule,
            subclass_mode_model=True,
            datamodule_class=None,
            args=argv,
            parser_class=GenLIPArgumentParser,
            trainer_defaults={
                "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                           "init_args": {"save_dir": "runs"}},
            },
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # see OPTIMIZER_REFUSAL
        )
    except ArgumentError as err:
        options = getattr(err, "genlip_options", None)
        raise GenLIPUserError(short_parse_error(str(err), command=command, options=options)) from err
    except OSError as err:
        # An unwritable run directory, an unreadable data file: the path and the reason.
        if err.filename is None:
            raise
        raise GenLIPUserError(os_error(err)) from err
    except Exception as err:
        line = getattr(err, "genlip_line", None)  # a lost peer rank (ProcessGroupGuard wrote the traceback)
        if line is None:
            raise
        raise GenLIPRunError(line) from err
    return 0


if __name__ == "__main__":  # pragma: no cover - `genlip fit ...` is the entry point
    sys.exit(main(sys.argv[1:]))
