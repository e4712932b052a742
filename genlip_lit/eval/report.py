"""`genlip eval`: run the configured evaluations once on a checkpoint; write `report.json` and `report.md`.

    genlip eval --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --config experiments/eval.yaml

The config lists evaluation callbacks exactly as `trainer.callbacks` does in a fit config (class_path +
init_args), and optionally a `data:` block of `GenLIPDataModule` init args; without one, the data the checkpoint
was trained on is used (its val split is the held-out set). Images go next to the reports as PNG files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import torch
import yaml
from PIL import Image

from genlip_lit.errors import GenLIPUserError
from genlip_lit.modules.loading import import_class, load_checkpoint


def resolve_device(name: str) -> torch.device:
    """A command's --device: "auto" = CUDA when available, else CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """A command's --threads: torch CPU threads for the block (0 = leave torch's choice); restored after, so
    in-process callers (tests) keep their setting. On a shared machine 1 thread can beat 2 competing ones."""
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_evaluations(specs: list[Any]) -> list[Any]:
    """Instantiate `[{class_path, init_args}, ...]`; a bare class path string is allowed too."""
    from genlip_lit.callbacks.evaluation import EvalCallback

    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"class_path": spec}
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise GenLIPUserError(f"evaluations[{i}] needs a class_path, got {spec!r}")
        path = spec["class_path"]
        if "." not in path:
            path = f"genlip_lit.callbacks.{path}"
        cls = import_class(path)
        if not (isinstance(cls, type) and issubclass(cls, EvalCallback)):
            raise GenLIPUserError(f"evaluations[{i}]: {path} is not an evaluation callback (EvalCallback)")
        try:
            out.append(cls(**(spec.get("init_args") or {})))
        except TypeError as err:
            raise GenLIPUserError(f"evaluations[{i}] ({path}): {err}") from None
    return out


def build_datamodule(module: Any, data_hparams: dict[str, Any], override: dict[str, Any] | None) -> Any:
    from genlip_lit.data.datamodule import GenLIPDataModule

    # LightningCLI adds private keys (_class_path, _instantiator): they are not init arguments
    args = {k: v for k, v in {**data_hparams, **(override or {})}.items() if not k.startswith("_")}
    if override and "data_dir" in override:
        args["synthetic"] = None
    try:
        dm = GenLIPDataModule(**args, caption_encoder=module.caption_encoder)
    except TypeError as err:
        raise GenLIPUserError(f"data: {err}") from None
    dm.prepare_data()
    dm.setup("validate")
    return dm


def _slug(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def run_evaluations(module: Any, evaluations: list[Any], datamodule: Any, output: str) -> dict[str, Any]:
    from genlip_lit.callbacks.evaluation import EvalData

    os.makedirs(output, exist_ok=True)
    data = EvalData(datamodule, module.device)
    report: dict[str, Any] = {"evaluations": {}}
    md = ["# genlip eval report", ""]
    for ev in evaluations:
        data.batch_size = ev.batch_size
        start = time.perf_counter()
        with torch.no_grad():
            result = ev.evaluate(module, data)
        result.scalars[f"{ev.name}/seconds"] = time.perf_counter() - start
        images = {}
        for tag, image in result.images.items():
            name = f"{_slug(tag)}.png"
            Image.fromarray(image).save(os.path.join(output, name))
            images[tag] = name
        report["evaluations"][ev.name] = {
            "class": type(ev).__name__,
            "scalars": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.scalars.items()},
            "images": images,
            "details": result.details,
        }
        md += [f"## {type(ev).__name__}", "", "| metric | value |", "|---|---|"]
        md += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.scalars.items()
               if not k.startswith("sink/") or k.endswith("_mean")]
        md.append("")
        md += [f"![{tag}]({name})" for tag, name in images.items()]
        for tag, text in result.texts.items():
            md += ["", f"**{tag}**", "", text]
        md.append("")
    with open(os.path.join(output, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    with open(os.path.join(output, "report.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(md))
    return report


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genlip eval", description="Run evaluations on a checkpoint; write reports.")
    p.add_argument("--ckpt", required=True, help="a checkpoint written by `genlip fit`")
    p.add_argument("--config", required=True, help="YAML with `evaluations:` (and optionally `data:`)")
    p.add_argument("--output", default=None, help="report directory (default: eval/ beside the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = p.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as fh:
            config = yaml.safe_load(fh) or {}
    except OSError as err:
        raise GenLIPUserError(f"--config {args.config!r}: {err}") from None
    unknown = sorted(set(config) - {"evaluations", "data"})
    if unknown:
        raise GenLIPUserError(f"{args.config}: unknown key(s) {unknown}; allowed: evaluations, data")
    evaluations = build_evaluations(config.get("evaluations") or [])
    if not evaluations:
        raise GenLIPUserError(f"{args.config} lists no evaluations")
    module, data_hparams = load_checkpoint(args.ckpt, resolve_device(args.device))
    datamodule = build_datamodule(module, data_hparams, config.get("data"))
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "eval")
    report = run_evaluations(module, evaluations, datamodule, output)
    for name, entry in report["evaluations"].items():
        shown = {k: v for k, v in entry["scalars"].items() if "/layer" not in k}
        print(f"{name}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    print(f"wrote {os.path.join(output, 'report.json')} and report.md")
    return 0


def probe_main(argv: list[str] | None = None) -> int:
    """`genlip probe --ckpt CKPT --data IMAGEFOLDER`: linear and attentive probe top-1 on frozen features."""
    from types import SimpleNamespace

    from genlip_lit.callbacks.evaluation import EvalData, LinearProbe

    p = argparse.ArgumentParser(prog="genlip probe", description="Probe a checkpoint's frozen features.")
    p.add_argument("--ckpt", required=True, help="a checkpoint written by `genlip fit`")
    p.add_argument("--data", required=True, help="ImageFolder root: CLASS/*.jpg (or train/CLASS, val/CLASS)")
    p.add_argument("--budget", type=int, default=5000, help="most training images (default 5000)")
    p.add_argument("--test-budget", type=int, default=2000, help="most test images (default 2000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    module, data_hparams = load_checkpoint(args.ckpt, resolve_device(args.device))
    preprocessing = SimpleNamespace(  # the checkpoint's own image size and normalisation
        image_size=int(data_hparams.get("image_size", 224)),
        mean=tuple(data_hparams.get("mean", (0.5, 0.5, 0.5))),
        std=tuple(data_hparams.get("std", (0.5, 0.5, 0.5))),
        data_dirs=[args.data],
    )
    probe = LinearProbe(budget=args.budget, test_budget=args.test_budget, batch_size=args.batch_size,
                        image_folder=args.data)
    with torch.no_grad():
        result = probe.evaluate(module, EvalData(preprocessing, module.device, args.batch_size))
    for name in ("linear", "attentive"):
        r = result.details[name]
        print(f"{name:9s} top-1 {r['top1']:.4f}  ({r['num_train']} train / {r['num_test']} test images, "
              f"{r['num_classes']} classes, chance {1 / max(r['num_classes'], 1):.4f})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result.details, fh, indent=2)
    return 0
