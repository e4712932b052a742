"""`genlip probe-full`: the frozen-feature probe over a whole labelled set, as a Lightning run (ImageNet protocol).

    genlip probe-full --config experiments/probe_imagenet.yaml --model.encoder runs/so16 --data.data data/in1k
    genlip probe-full --config experiments/probe_imagenet.yaml ... --trainer.devices 8        # DDP, 8 GPUs
    genlip probe-full --config experiments/probe_imagenet.yaml ... --ckpt_path runs/probe/.../last.ckpt  # resume

`genlip probe` stays the quick probe (a subsample's features in memory, L-BFGS linear probe, no augmentation,
one process); this command streams every image through the frozen encoder for `trainer.max_epochs` epochs with
augmentation, and is a `genlip fit` in everything else: the same LightningCLI (YAML configs that compose,
`--section.key VALUE` overrides, `--print_config`), DDP (tested on gloo), bf16, the `checkpoint.*` callback,
`--ckpt_path` for an exact resume, loggers and progress. The model is `studies/probe_module.StreamedProbe`, the data
`studies/probe_data.ProbeDataModule`; their keys are the `model.*` and `data.*` sections. The run ends with one line
of top-1 per head and where the predictions and the checkpoint are.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from argparse import ArgumentError
from typing import Any

from genlip_lit.errors import GenLIPUserError

log = logging.getLogger(__name__)


def _cli_class() -> type:
    from genlip_lit.commands.fit import GenLIPCLI

    class ProbeCLI(GenLIPCLI):
        """GenLIPCLI with the probe's handshake (encoder preprocessing -> data; data's classes -> heads)."""

        def instantiate_classes(self) -> None:
            super().instantiate_classes()
            self.datamodule.connect(self.model.preprocessing)
            self.model.connect(self.datamodule.class_names, self.datamodule.preprocessing.image_size)

        def after_fit(self) -> None:
            line = result_line(self.trainer)  # on every rank: the log dir is agreed on by a collective
            if self.trainer.is_global_zero:
                log.info("%s", line)

    return ProbeCLI


def result_line(trainer: Any) -> str:
    """`probe-full: attentive top-1 84.1%, linear top-1 78.0% on 50000 val images (epoch 20); ...`."""
    module = trainer.lightning_module
    top1 = getattr(module, "last_top1", None)
    if not top1:
        return "probe-full: done (no validation ran: set trainer.check_val_every_n_epoch)"
    figures = ", ".join(f"{name} top-1 {100 * value:.2f}%" for name, value in top1.items())
    callback = trainer.checkpoint_callback
    ckpt = getattr(callback, "last_model_path", "") if callback is not None else ""
    folder = trainer.log_dir or ""
    predictions = os.path.join(folder, "val_predictions.csv")
    return (f"probe-full: {figures} on {module.last_val_images} val images after {trainer.current_epoch} epochs "
            f"({module.skipped_train} train images skipped); predictions: "
            f"{predictions if os.path.isfile(predictions) else 'none'}; checkpoint: {ckpt or 'none'}")


# The flags and trainer keys `genlip probe-full --help` shows (Lightning's complete list: --help full)
HELP_FLAGS = (
    ("--config FILE", "a YAML config (several compose, later ones win): experiments/probe_imagenet.yaml"),
    ("--print_config", "print the merged config and stop"),
    ("--ckpt_path FILE", "resume a probe run from its checkpoint (heads, optimizer, epoch, data position)"),
    ("--help full", "Lightning's complete help: every trainer key"),
)
HELP_TRAINER_KEYS = {
    "trainer.max_epochs": "passes over the training images",
    "trainer.devices": "devices per node (or auto)",
    "trainer.num_nodes": "nodes (DDP over all of them)",
    "trainer.precision": "bf16-mixed on GPU, 32-true on CPU",
    "trainer.check_val_every_n_epoch": "top-1 on the val images every N epochs",
    "trainer.logger.init_args.save_dir": "where runs go (runs/probe/NAME/version_N)",
    "seed_everything": "global seed (the heads and data have their own seeds)",
}


def short_help(config: dict[str, Any] | None = None) -> str:
    """The page `genlip probe-full --help` prints: the probe's model and data keys with the config's values."""
    from genlip_lit.commands.fit_help import config_values, key_page, model_keys, trainer_rows
    from genlip_lit.studies.probe_data import ProbeDataModule
    from genlip_lit.studies.probe_module import StreamedProbe

    config = config or {}
    where = "values: the config's, else the class defaults" if config else "values: the class defaults"
    sections = [
        (f"Model keys: --model.KEY (StreamedProbe; {where})", model_keys(StreamedProbe), config_values(config, "model")[1]),
        (f"Data keys: --data.KEY (ProbeDataModule; {where})", model_keys(ProbeDataModule), config_values(config, "data")[1]),
        ("Trainer keys (the usual ones; all: genlip probe-full --help full)", trainer_rows(config, HELP_TRAINER_KEYS),
         {}),
    ]
    return key_page("probe-full", "Trains probe heads on a frozen encoder over a whole labelled set (ImageNet "
                    "protocol)", HELP_FLAGS, sections,
                    ["Config: experiments/probe_imagenet.yaml (the paper's attentive probe); `genlip probe` is the "
                     "quick in-memory one."])


def _name_the_file(message: str, args: list[str]) -> str:
    """`FILE: key: not an option` when the unknown key comes from a --config file (as every command says it)."""
    import yaml

    from genlip_lit.commands.common import config_files

    key = message.split(":", 1)[0].strip()
    if "not an option" not in message.splitlines()[0] or not key:
        return message
    for path in config_files(args):
        try:
            with open(path, encoding="utf-8") as fh:
                content = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(content, dict) and key.split(".", 1)[0] in content:
            return f"{path}: {message}"
    return message


def main(argv: list[str] | None = None) -> int:
    """Run the probe (`fit`); `argv` are the arguments after `genlip probe-full`."""
    from genlip_lit.commands.fit import (
        GenLIPArgumentParser,
        _null_on_command_line,
        check_config_files,
        os_error,
    )
    from genlip_lit.commands.parse_errors import is_optimizer_flag, short_parse_error
    from genlip_lit.console import logs

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["fit"]:
        args = args[1:]
    logs.sync_library_levels()
    if any(is_optimizer_flag(arg) for arg in args):
        raise GenLIPUserError("--optimizer/--lr_scheduler are not supported: the probe builds AdamW per head with "
                              "warmup + cosine; set model.attentive_lr, attentive_weight_decay, linear_lr, "
                              "linear_weight_decay, betas, warmup_epochs or min_lr_ratio instead")
    check_config_files(args)
    from genlip_lit.commands.fit_help import help_request, merged_configs

    wanted, args = help_request(args)  # "full": Lightning's own, complete help
    if wanted == "short":
        print(short_help(merged_configs(args)))
        return 0
    _null_on_command_line()
    # the frozen encoder is in eval mode on purpose; Lightning's warning about it would only worry the user
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    from genlip_lit.studies.probe_data import ProbeDataModule
    from genlip_lit.studies.probe_module import StreamedProbe

    try:
        _cli_class()(
            model_class=StreamedProbe,
            datamodule_class=ProbeDataModule,
            args=["fit", *args],
            parser_class=GenLIPArgumentParser,
            trainer_defaults={
                "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                           "init_args": {"save_dir": "runs/probe"}},
            },
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            seed_everything_default=0,  # nothing random outside the probe's own seeds; this keeps Lightning quiet
        )
    except ArgumentError as err:
        options = getattr(err, "genlip_options", None)
        message = short_parse_error(str(err), command="probe-full", options=options)
        raise GenLIPUserError(_name_the_file(message, args)) from err
    except OSError as err:
        if err.filename is None:
            raise
        raise GenLIPUserError(os_error(err)) from err
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
