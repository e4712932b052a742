"""The `genlip` command: LightningCLI subcommands plus project commands.

    genlip fit --config experiments/quickstart.yaml
    genlip optimize --source synthetic --output data/scenes --num-samples 20000
    genlip caption --ckpt runs/quickstart/version_0/checkpoints/last.ckpt scene.png
    genlip caption-eval --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --objects 1
    genlip eval --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --config experiments/eval.yaml
    genlip probe --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --data my_imagefolder/
    genlip compare experiments/compare/*.yaml --output runs/compare
    genlip export --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --output encoders/quickstart
    genlip eval-res --ckpt stage1.ckpt --ckpt stage2.ckpt --resolutions 64 128 native --output runs/eval_res
    genlip llm-probe --encoder encoders/genlip --encoder encoders/clip --lm SMOLLM2_DIR --output runs/llm_probe

`fit | validate | test | predict` go through LightningCLI (model and data are class_path plug-ins; several
`--config` files compose, later ones win). The other commands are plain argparse programs.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from genlip_lit.callbacks.checkpoint import ResumableCheckpoint
from genlip_lit.errors import GenLIPUserError
from genlip_lit.modules.base import EncoderModule


class GenLIPCLI(LightningCLI):
    """LightningCLI with the project's defaults: TensorBoard under runs/, rich progress, a checkpoint callback."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always present and configurable as `checkpoint.*` in YAML; `last.ckpt` is what `genlip caption` reads.
        # ResumableCheckpoint also saves the step where max_steps stops, so a resume loses no work.
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "{step}"})

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Rich progress by default, unless the user disabled the bar or configured another one.
        configured = list(config.get("callbacks") or []) + callbacks
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in configured
        ):
            callbacks = [*callbacks, RichProgressBar()]
        return super()._instantiate_trainer(config, callbacks)


def _run_lightning(argv: list[str] | None) -> None:
    GenLIPCLI(
        model_class=EncoderModule,
        subclass_mode_model=True,
        datamodule_class=None,
        args=argv,
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
        },
        save_config_kwargs={"overwrite": True},
    )


def _quiet_known_noise() -> None:
    """Silence warnings that say nothing actionable about this project."""
    # lightning 2.6 under torch >= 2.10 uses a deprecated pytree check internally.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # litdata's StreamingDataset defines __len__ and shards per worker itself, which this warning does not know.
    warnings.filterwarnings("ignore", message=r".*IterableDataset. has .__len__. defined.*")


# Project commands -> "module:function", imported only when called so `genlip fit` does not pay for them.
EXTRA_COMMANDS = {
    "optimize": "genlip_lit.data.optimize:main",
    "caption": "genlip_lit.eval.captions:caption_main",
    "caption-eval": "genlip_lit.eval.captions:caption_eval_main",
    "eval": "genlip_lit.eval.report:eval_main",
    "probe": "genlip_lit.eval.report:probe_main",
    "compare": "genlip_lit.eval.compare:compare_main",
    "export": "genlip_lit.export:export_main",
    "eval-res": "genlip_lit.eval.resolution:resolution_main",
    "llm-probe": "genlip_lit.eval.llm_probe:llm_probe_main",
    "import": "genlip_lit.commands.import_checkpoint:main",
}


def _command(name: str) -> Callable[[list[str]], int]:
    module, _, function = EXTRA_COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `genlip` console script; tests call it in-process with an argument list."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_known_noise()
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            return _command(argv[0])(argv[1:]) or 0
        if argv and argv[0] in ("-h", "--help"):
            print(f"extra commands: {', '.join(EXTRA_COMMANDS)} (each has --help)\n")
        # LightningCLI reads sys.argv itself when args is None (and warns if given both).
        _run_lightning(None if from_command_line else argv)
        return 0
    except GenLIPUserError as err:
        # A user-fixable problem: one line naming the culprit, no traceback.
        print(f"genlip: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
