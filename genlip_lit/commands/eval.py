"""`genlip eval`: run the configured evaluations once on a checkpoint; write report.json, report.md and figures.

    genlip eval --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --config experiments/eval.yaml

The config is a YAML of this command's options: `evaluations:` lists registered evaluations by name (`probe`,
`readout`, `zero_shot`, `captions`, `sink`, `transfer`, and any registered in code: `eval/registry.py`), with
their options as `{evaluation: probe, budget: 500}`, or evaluation callbacks exactly as `trainer.callbacks` does in
a fit config (class_path + init_args; a bare class name means genlip_lit.callbacks.NAME), and an optional `data:` block of `GenLIPDataModule` arguments; without one, the data the checkpoint was trained
on is used (its val split is the held-out set). Images go next to the reports as PNG files.
"""

from __future__ import annotations

import os
import re
from typing import Any

from genlip_lit.commands.common import add_ckpt, add_device, add_output, add_threads, command_parser, parse
from genlip_lit.console.logs import counted_library_warnings
from genlip_lit.errors import GenLIPUserError


def build_parser() -> Any:
    p = command_parser("eval", "Run evaluations on a checkpoint; write report.json, report.md and figures.")
    add_ckpt(p)
    p.add_argument("--evaluations", type=list[Any], default=[], help="registered evaluations by name (probe, "
                   "readout, zero_shot, captions, sink, transfer; {evaluation: NAME, OPTION: value}) or callbacks as in "
                   "trainer.callbacks; usually given in the --config YAML")
    p.add_argument("--data", type=dict | None, default=None, help="GenLIPDataModule arguments over the "
                   "checkpoint's own (null: the data it trained on)")
    add_output(p, required=False, help="report directory (null: eval/ beside the checkpoint)")
    add_device(p)
    add_threads(p)
    return p


def build_evaluations(specs: list[Any]) -> list[Any]:
    """The evaluation callbacks of `evaluations:`. Each entry is a registered evaluation's name (`probe`), or
    `{evaluation: NAME, OPTION: value, ...}`, or a callback class as in trainer.callbacks (`{class_path,
    init_args}`; a bare class name means genlip_lit.callbacks.NAME). A name runs the callback class named for it
    (probe: LinearProbe, so reports and checkpoints read as before), else `genlip_lit.callbacks.Evaluate`."""
    from genlip_lit.eval import evaluations as registry

    out = []
    for i, spec in enumerate(specs):
        if hasattr(spec, "as_dict"):  # jsonargparse resolved it into a Namespace
            spec = spec.as_dict()
        if isinstance(spec, str):  # lower case without dots: an evaluation's name; else a class
            spec = {"evaluation": spec} if spec.isidentifier() and spec[:1].islower() else {"class_path": spec}
        if isinstance(spec, dict) and "evaluation" in spec and "class_path" not in spec:
            name = spec["evaluation"]
            options = {k: v for k, v in spec.items() if k != "evaluation"}
            make = _callback_for(registry.get(str(name), where=f"evaluations[{i}]").name)
            out.append(_instantiate(make, options, f"evaluations[{i}] ({name})"))
            continue
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise GenLIPUserError(f"evaluations[{i}] needs a registered evaluation's name or a class_path, got {spec!r}"
                                  f" (registered: {', '.join(e.name for e in registry.registered())})")
        path = spec["class_path"]
        out.append(_instantiate(_callback_class(path, i), dict(spec.get("init_args") or {}),
                                f"evaluations[{i}] ({path})"))
    return out


def _callback_for(name: str) -> Any:
    """A maker of the callback for registered evaluation `name`: the class named for it, else `Evaluate`."""
    import genlip_lit.callbacks as callbacks

    for attr in callbacks.__all__:
        cls = getattr(callbacks, attr)
        if isinstance(cls, type) and getattr(cls, "evaluation", None) == name:
            return cls
    return lambda **options: callbacks.Evaluate(name, options=options)


def _callback_class(path: str, i: int) -> type:
    import difflib
    import importlib

    from genlip_lit.callbacks.evaluation import EvalCallback

    if "." not in path:
        path = f"genlip_lit.callbacks.{path}"
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        import genlip_lit.callbacks as known

        close = difflib.get_close_matches(name, known.__all__, n=1, cutoff=0.6)
        hint = f"; did you mean genlip_lit.callbacks.{close[0]}?" if close else ""
        raise GenLIPUserError(f"evaluations[{i}]: cannot import {path!r} ({err}){hint}") from None
    if not (isinstance(cls, type) and issubclass(cls, EvalCallback)):
        raise GenLIPUserError(f"evaluations[{i}]: {path} is not an evaluation callback (EvalCallback)")
    return cls


def _instantiate(make: Any, args: dict[str, Any], where: str) -> Any:
    """`make(**args)`; a wrong option or value is one line naming the entry (once: the class's own prefix goes)."""
    try:
        return make(**args)
    except (TypeError, ValueError, GenLIPUserError) as err:
        message = re.sub(r"^[A-Z]\w*: ", "", str(err))
        raise GenLIPUserError(f"{where}: {message}") from None


def data_arguments(data: dict[str, Any] | None) -> dict[str, Any]:
    """The GenLIPDataModule arguments of a `data:` block: given bare, or copied from a fit config (class_path +
    init_args)."""
    if not data or "init_args" not in data:
        return dict(data or {})
    if str(data.get("class_path", "GenLIPDataModule")).rpartition(".")[2] != "GenLIPDataModule":
        raise GenLIPUserError(f"data: genlip eval reads GenLIPDataModule data, not {data['class_path']!r}")
    return dict(data["init_args"] or {})


def check_data_dirs(data: dict[str, Any] | None) -> None:
    """`data.data_dir`s exist (local folders, or URLs with train shards) and local shards are whole, checked before
    the checkpoint loads."""
    from genlip_lit.data.shard_check import check_shard_dir
    from genlip_lit.storage import paths as storage

    dirs = data_arguments(data).get("data_dir")
    for d in [dirs] if isinstance(dirs, str) else list(dirs or []):
        if storage.is_remote(d):
            if not storage.isfile(storage.join(str(d), "train", "index.json")):
                raise GenLIPUserError(f"data.data_dir {d}: no train/ litdata shards there (write them with "
                                      "`genlip optimize --output URL`)")
        elif not os.path.isdir(os.path.expanduser(str(d))):
            raise GenLIPUserError(f"data.data_dir {d}: no such directory (write shards with `genlip optimize`)")
        check_shard_dir(str(d))  # a truncated chunk or a broken index.json: one line naming the file


def build_datamodule(module: Any, data_hparams: dict[str, Any], override: dict[str, Any] | None) -> Any:
    """The checkpoint's data module (with `override` applied), connected to the module and set up."""
    from genlip_lit.data.datamodule import GenLIPDataModule

    override = data_arguments(override)
    # LightningCLI adds private keys (_class_path, _instantiator): they are not init arguments
    args = {k: v for k, v in {**data_hparams, **(override or {})}.items() if not k.startswith("_")}
    if override and "data_dir" in override:
        args["synthetic"] = None
    try:
        dm = GenLIPDataModule(**args)
    except TypeError as err:
        raise GenLIPUserError(f"data: {err}") from None
    dm.connect(**module.data_settings())
    dm.prepare_data()
    dm.setup("validate")
    return dm


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    evaluations = build_evaluations(args.evaluations or [])
    if not evaluations:
        raise GenLIPUserError("no evaluations: list them under `evaluations:` in --config (see experiments/eval.yaml)")
    check_data_dirs(args.data)
    from genlip_lit.commands.common import beside_checkpoint, load_module, resolve_ckpt, torch_threads
    from genlip_lit.commands.output import check_output, claim_output
    from genlip_lit.eval.data import DataModuleView
    from genlip_lit.eval.report import run_evaluations

    if args.output:
        check_output(args.output, "eval", args.overwrite)  # before the (slower) checkpoint and data load
    ckpt = resolve_ckpt(args.ckpt)
    output = args.output or beside_checkpoint(ckpt, "eval")
    check_output(output, "eval", args.overwrite)
    with torch_threads(args.threads), counted_library_warnings():  # PIL's warnings: one counted line
        module, _, data_hparams = load_module(ckpt, args.device)
        datamodule = build_datamodule(module, data_hparams, args.data)
        claim_output(output, "eval", args.overwrite)
        from genlip_lit.checkpoints.integrity import read_checkpoint
        from genlip_lit.encoders.model_card import report_identity

        about = {"checkpoint": report_identity(ckpt, read_checkpoint(ckpt, mmap=True))}  # the model card matches it
        report = run_evaluations(module, evaluations, DataModuleView(datamodule, module.device), output, about)
    for name, entry in report["evaluations"].items():
        shown = {k: v for k, v in entry["scalars"].items() if "/layer" not in k}
        print(f"{name}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
        if "skipped" in entry["details"]:
            print(f"{name}: skipped ({entry['details']['skipped']})")
        elif entry.get("held_out"):
            print(f"{name}: {entry['held_out']}")
        if "note" in entry["details"]:  # why a figure is missing or how to read it
            print(f"{name}: {entry['details']['note']}")
    print(f"wrote {os.path.join(output, 'report.json')} and report.md")
    return 0
