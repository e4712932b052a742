"""python benchmarks/sweep_quickstart.py --name lr3e-3 -- --model.init_args.lr 3e-3

Run one quickstart recipe (experiments/quickstart.yaml plus `genlip fit` overrides after `--`) and measure it by
process CPU time, which a shared, loaded machine distorts far less than wall time:

- `data_cpu_s`: generating the synthetic cache (this process and its generator workers; 0 when it was cached),
- `startup_cpu_s`: imports, config parsing, tokenizer and model construction, up to the start of training,
- `train_cpu_s`, `step_cpu_ms`: the fit loop (steps, validation, logging, progress, callbacks), per step,
- `val_cpu_s`: the part of it spent in validation,
- then `caption-eval` on held-out scenes (`--objects`, `--num-scenes`) of the last checkpoint: the share of
  objects named with the right colour and shape, per number of objects in the scene, and its CPU time.

By default the run is the sweep setting: one torch thread, no evaluation callbacks (`--trainer.callbacks=[]`),
no progress bar, only `last.ckpt` kept; `--as-configured` keeps the config's callbacks, checkpoints and a plain
progress bar (`--progress rich` draws Rich's bar into /dev/null, as on a terminal). Every run appends one JSON
line to `--results` (default runs/sweep/results.jsonl); `--table` prints them all as a table and exits:

    python benchmarks/sweep_quickstart.py --table
    python benchmarks/sweep_quickstart.py --name bs16 --objects 1 2 3 -- --data.init_args.batch_size 16 \
        --trainer.max_steps 1350

The accuracy of a CPU run is deterministic for a config, so recipes compare at a fixed CPU-time budget.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

CONFIG = "experiments/quickstart.yaml"


def _cpu_with_children() -> float:
    """User + system CPU seconds of this process and of its waited-for children (generator workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timer_callback() -> Any:
    import lightning as L

    class CPUTimer(L.Callback):
        """Process CPU time of the fit loop, of its validation passes, and the last validation loss."""

        def __init__(self) -> None:
            self.start = self.end = 0.0
            self.val = 0.0
            self._val_start = 0.0
            self.val_losses: list[float] = []

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.start = time.process_time()

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.end = time.process_time()

        def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._val_start = time.process_time()

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.val += time.process_time() - self._val_start
            loss = trainer.callback_metrics.get("val/loss")
            if loss is not None:
                self.val_losses.append(round(float(loss), 4))

    return CPUTimer()


def _rich_bar_to_devnull() -> Any:
    from lightning.pytorch.callbacks import RichProgressBar

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
    return RichProgressBar(console_kwargs={"file": sink, "force_terminal": True, "width": 120})


def run(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    from genlip_lit.commands.caption_eval import main as caption_eval_main
    from genlip_lit.commands.fit import GenLIPArgumentParser, GenLIPCLI, _null_on_command_line
    from genlip_lit.console import logs
    from genlip_lit.modules.base import EncoderModule

    logs.sync_library_levels()
    _null_on_command_line()
    out_dir = Path(args.out) / args.name
    fixed = [
        "--config", args.config,
        "--trainer.logger.init_args.save_dir", str(Path(args.out)),
        "--trainer.logger.init_args.name", args.name,
        "--trainer.logger.init_args.version", "0",
    ]
    if not args.as_configured:
        fixed += ["--trainer.callbacks=[]", "--trainer.enable_progress_bar=false", "--checkpoint.every_n_train_steps=null"]
    cli = GenLIPCLI(
        model_class=EncoderModule,
        subclass_mode_model=True,
        datamodule_class=None,
        args=fixed + overrides,
        parser_class=GenLIPArgumentParser,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        run=False,
    )
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    timer = _timer_callback()
    trainer.callbacks.append(timer)
    if args.as_configured and args.progress == "rich":
        from lightning.pytorch.callbacks import ProgressBar

        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ProgressBar)]
        trainer.callbacks.append(_rich_bar_to_devnull())

    d0, p0 = _cpu_with_children(), time.process_time()
    data.trainer = trainer  # prepare_data may ask the module for its patch size
    data.prepare_data()
    data_cpu, data_own_cpu = _cpu_with_children() - d0, time.process_time() - p0

    trainer.fit(model, datamodule=data)
    steps = int(trainer.global_step)
    ckpt = out_dir / "version_0" / "checkpoints" / "last.ckpt"

    accuracy: dict[str, float] = {}
    e0 = time.process_time()
    if args.objects:
        result_file = out_dir / "caption_eval.json"
        caption_eval_main(["--ckpt", str(ckpt), "--objects", *map(str, args.objects),
                           "--num-scenes", str(args.num_scenes), "--output", str(out_dir), "--overwrite"])
        for res in json.loads(result_file.read_text()):
            accuracy[str(res["objects_per_scene"])] = round(100 * res["object_accuracy"], 1)
    eval_cpu = time.process_time() - e0
    train_cpu = timer.end - timer.start
    return {
        "name": args.name,
        "overrides": overrides,
        "as_configured": args.as_configured,
        "threads": args.threads,
        "steps": steps,
        "batch_size": data.batch_size,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "data_cpu_s": round(data_cpu, 1),
        "startup_cpu_s": round(timer.start - data_own_cpu, 1),  # process start to the first step, data aside
        "train_cpu_s": round(train_cpu, 1),
        "step_cpu_ms": round(1000 * (train_cpu - timer.val) / max(steps, 1), 2),
        "val_cpu_s": round(timer.val, 1),
        "val_loss": timer.val_losses,
        "accuracy": accuracy,
        "eval_cpu_s": round(eval_cpu, 1),
        "num_scenes": args.num_scenes,
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    head = "| name | steps | batch | train CPU s | ms/step | val loss | 1 obj | 2 obj | 3 obj | overrides |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        acc = r["accuracy"]
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['batch_size']} | {r['train_cpu_s']} | {r['step_cpu_ms']} | "
            f"{r['val_loss'][-1] if r['val_loss'] else '-'} | {acc.get('1', '-')} | {acc.get('2', '-')} | "
            f"{acc.get('3', '-')} | {' '.join(r['overrides'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="run name (runs/sweep/NAME/version_0)")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--out", default="runs/sweep", help="where runs and results.jsonl go")
    parser.add_argument("--results", default=None, help="JSON-lines file (default OUT/results.jsonl)")
    parser.add_argument("--objects", type=int, nargs="*", default=[1], help="caption-eval object counts")
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time ~ independent of load)")
    parser.add_argument("--as-configured", action="store_true", help="keep the config's callbacks and checkpoints")
    parser.add_argument("--progress", choices=("plain", "rich"), default="plain", help="with --as-configured")
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    args = parser.parse_args(argv)
    results = Path(args.results or Path(args.out) / "results.jsonl")
    if args.table:
        print(table(results))
        return 0
    if not args.name:
        parser.error("--name is required")
    record = run(args, overrides)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
