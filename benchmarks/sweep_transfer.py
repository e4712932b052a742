"""python benchmarks/sweep_transfer.py --all --budget-cpu-s 1800     # every recipe not yet measured, within budget

Which recipe makes a CPU-trained encoder transfer to real images? Each named recipe below (data mixture, model
size, steps, resolution) is `experiments/quickstart_transfer.yaml` plus `genlip fit` overrides, trained in this
process on one torch thread, then probed on scikit-learn's 1,797 handwritten digits (`eval/transfer.py`: 5-fold
linear probe, every image held out once, binomial standard errors) beside the same architecture at random init,
raw pixels and majority class. A recipe transfers when its margin over random init exceeds 3 standard errors of
the difference.

Costs are process CPU seconds (data generation, training, the transfer evaluation), which a shared, loaded machine
distorts far less than wall time; wall time and the load average are recorded too. Every run appends one JSON line
to OUT/results.jsonl; `--table` prints them as a Markdown table:

    python benchmarks/sweep_transfer.py --recipe digits_1500          # one recipe
    python benchmarks/sweep_transfer.py --table
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

CONFIG = "experiments/quickstart_transfer.yaml"
SYN = "--data.init_args.synthetic"
DIGIT_HEAVY = [f"{SYN}.glyph_prob=0.8", f"{SYN}.digit_prob=0.9", f"{SYN}.blur_prob=0.4", f"{SYN}.busy_prob=0.3"]
PX32 = [f"{SYN}.image_size=32", "--data.init_args.image_size=32"]  # 16 patches of 8 px instead of 64
SHORT = [f"{SYN}.max_objects=2"]  # shorter captions: text tokens are most of a step's cost at 32 px
# scan-like scenes: one glyph filling the frame, nearly all digits, mostly blurry, mostly plain backgrounds
SCAN = [f"{SYN}.glyph_prob=1.0", f"{SYN}.digit_prob=0.9", f"{SYN}.blur_prob=0.8", f"{SYN}.busy_prob=0.1",
        f"{SYN}.max_objects=1", f"{SYN}.fill_prob=1.0", *PX32]
# the recipe that transfers, as a config overlay (after a compare overlay: its model keys apply to that objective)
SCAN_P4 = ["--config", "experiments/transfer/scan.yaml"]
WORLD_TEXT = ["--model.init_args.tokenizer.init_args.compact_corpus=world", "--model.init_args.max_text_len=64"]


def _steps(n: int) -> list[str]:
    """n steps of batch 8 and as many training scenes as samples seen (each scene seen once)."""
    return [f"--trainer.max_steps={n}", f"--trainer.val_check_interval={n}", f"{SYN}.num_train={8 * n}",
            f"{SYN}.num_val=64"]


# name -> (what it varies, overrides), in the order `--all` runs them (most informative first: on a shared
# 2-core machine only the first few may fit). The quickstart's tiny model (0.9M parameters, patch 8) unless named.
RECIPES: dict[str, tuple[str, list[str]]] = {
    "digits32_400": ("digit-heavy mixture, 32 px, up to 2 objects, 400 steps", [*DIGIT_HEAVY, *PX32, *SHORT,
                                                                               *_steps(400)]),
    "shapes32_400": ("control: the quickstart's scenes (6 shapes x 6 colours, words), 32 px, 400 steps",
                     ['--data.init_args.synthetic={"world": "shapes", "word_prob": 0.2, "image_size": 32, '
                      '"max_objects": 2, "num_train": 3200, "num_val": 64}', "--data.init_args.image_size=32",
                      "--model.init_args.tokenizer.init_args.compact_corpus=synthetic", "--trainer.max_steps=400",
                      "--trainer.val_check_interval=400"]),
    "digits32_1obj_1500": ("one object per scene, nearly all digits, half blurry, 32 px, 1,500 steps",
                           [f"{SYN}.glyph_prob=1.0", f"{SYN}.digit_prob=0.9", f"{SYN}.blur_prob=0.5",
                            f"{SYN}.busy_prob=0.3", f"{SYN}.max_objects=1", *PX32, *_steps(1500)]),
    "digits32_lr5e-4_400": ("digit-heavy, 32 px, up to 2 objects, peak lr 5e-4 instead of 2e-3, 400 steps",
                            [*DIGIT_HEAVY, *PX32, *SHORT, "--model.init_args.lr=0.0005", *_steps(400)]),
    "captioner32_400": ("the encoder-decoder captioner (same tower; its decoder reads the LAST layer's patch "
                        "features), digit-heavy, 32 px, 400 steps",
                        [*DIGIT_HEAVY, *PX32, *SHORT, "--config", "experiments/compare/captioner.yaml",
                         "--model.init_args.tokenizer.init_args.compact_corpus=world",
                         "--model.init_args.max_text_len=64", "--model.init_args.caption_max_new_tokens=64",
                         *_steps(400)]),
    "clip32_400": ("CLIP on the same tower (contrastive, batch 8), digit-heavy, 32 px, 400 steps",
                   [*DIGIT_HEAVY, *PX32, *SHORT, "--config", "experiments/compare/clip.yaml",
                    "--model.init_args.tokenizer.init_args.compact_corpus=world", "--model.init_args.max_text_len=64",
                    *_steps(400)]),
    "siglip32_400": ("SigLIP on the same tower (contrastive, batch 8), digit-heavy, 32 px, 400 steps",
                     [*DIGIT_HEAVY, *PX32, *SHORT, "--config", "experiments/compare/siglip.yaml",
                      "--model.init_args.tokenizer.init_args.compact_corpus=world",
                      "--model.init_args.max_text_len=64", *_steps(400)]),
    "digits32_1obj_4000": ("one object per scene, nearly all digits, half blurry, 32 px, 4,000 steps",
                           [f"{SYN}.glyph_prob=1.0", f"{SYN}.digit_prob=0.9", f"{SYN}.blur_prob=0.5",
                            f"{SYN}.busy_prob=0.3", f"{SYN}.max_objects=1", *PX32, *_steps(4000)]),
    "digits32_1obj_lr5e-4_4000": ("as digits32_1obj_4000 with peak lr 5e-4",
                                  [f"{SYN}.glyph_prob=1.0", f"{SYN}.digit_prob=0.9", f"{SYN}.blur_prob=0.5",
                                   f"{SYN}.busy_prob=0.3", f"{SYN}.max_objects=1", *PX32,
                                   "--model.init_args.lr=0.0005", *_steps(4000)]),
    "digits32_1obj_lr5e-4_10000": ("as digits32_1obj_4000 with peak lr 5e-4, 10,000 steps",
                                   [f"{SYN}.glyph_prob=1.0", f"{SYN}.digit_prob=0.9", f"{SYN}.blur_prob=0.5",
                                    f"{SYN}.busy_prob=0.3", f"{SYN}.max_objects=1", *PX32,
                                    "--model.init_args.lr=0.0005", *_steps(10000)]),
    "digits32_fill_lr5e-4_4000": ("as digits32_1obj_lr5e-4_4000, 80% of the scenes one glyph filling the frame "
                                  "(fill_prob 0.8), as a scanned digit does",
                                  [f"{SYN}.glyph_prob=1.0", f"{SYN}.digit_prob=0.9", f"{SYN}.blur_prob=0.5",
                                   f"{SYN}.busy_prob=0.3", f"{SYN}.max_objects=1", f"{SYN}.fill_prob=0.8", *PX32,
                                   "--model.init_args.lr=0.0005", *_steps(4000)]),
    "digits32_scan_lr2.5e-4_4000": ("every scene one glyph filling the frame (fill_prob 1.0), 80% blurry, 10% busy "
                                    "backgrounds, peak lr 2.5e-4, 4,000 steps",
                                    [f"{SYN}.glyph_prob=1.0", f"{SYN}.digit_prob=0.9", f"{SYN}.blur_prob=0.8",
                                     f"{SYN}.busy_prob=0.1", f"{SYN}.max_objects=1", f"{SYN}.fill_prob=1.0", *PX32,
                                     "--model.init_args.lr=0.00025", *_steps(4000)]),
    "digits32_scan_lr2.5e-4_10000": ("as digits32_scan_lr2.5e-4_4000, 10,000 steps",
                                     [*SCAN, "--model.init_args.lr=0.00025", *_steps(10000)]),
    "digits32_scan_lr5e-4_10000": ("as digits32_scan_lr2.5e-4_4000 with peak lr 5e-4, 10,000 steps",
                                   [*SCAN, "--model.init_args.lr=0.0005", *_steps(10000)]),
    "digits32_p4_scan_lr2.5e-4_4000": ("as digits32_scan_lr2.5e-4_4000 with 4-px patches (64 patches: one per "
                                       "pixel of an 8 x 8 scan): experiments/transfer/scan.yaml",
                                       ["--config", "experiments/transfer/scan.yaml"]),
    "digits32_p4_scan_lr2.5e-4_2000": ("experiments/transfer/scan.yaml at half the steps (2,000; each scene seen "
                                       "once): the 5-minute budget",
                                       [*SCAN_P4, *_steps(2000)]),
    "captioner32_p4_scan_4000": ("the captioner on experiments/transfer/scan.yaml (same tower, data, steps, lr)",
                                 ["--config", "experiments/compare/captioner.yaml", *SCAN_P4, *WORLD_TEXT,
                                  "--model.init_args.caption_max_new_tokens=64"]),
    "clip32_p4_scan_4000": ("CLIP on experiments/transfer/scan.yaml (same tower, data, steps, lr; batch 8)",
                            ["--config", "experiments/compare/clip.yaml", *SCAN_P4, *WORLD_TEXT]),
    "siglip32_p4_scan_4000": ("SigLIP on experiments/transfer/scan.yaml (same tower, data, steps, lr; batch 8)",
                              ["--config", "experiments/compare/siglip.yaml", *SCAN_P4, *WORLD_TEXT]),
    "digits32_scan_lr1e-4_4000": ("as digits32_scan_lr2.5e-4_4000 with peak lr 1e-4",
                                  [*SCAN, "--model.init_args.lr=0.0001", *_steps(4000)]),
    "digits32_1500": ("digit-heavy mixture, 32 px, up to 2 objects, 1,500 steps", [*DIGIT_HEAVY, *PX32, *SHORT,
                                                                                  *_steps(1500)]),
    "rich32_400": ("default rich mixture, 32 px, up to 2 objects, 400 steps", [*PX32, *SHORT, *_steps(400)]),
    "digits64_400": ("digit-heavy mixture, 64 px (64 patches), up to 2 objects, 400 steps",
                     [*DIGIT_HEAVY, *SHORT, *_steps(400)]),
    "digits32_small_400": ("digit-heavy, 32 px, a smaller model (width 64, depth 2), 400 steps",
                           [*DIGIT_HEAVY, *PX32, *SHORT, '--model.init_args.arch_overrides={"width": 64, "depth": 2, '
                            '"num_heads": 2, "ffn_hidden": 176, "drop_path_schedule": "uniform", '
                            '"weight_decay_scope": "all", "attn_init": "xavier"}', *_steps(400)]),
}


def _cpu_with_children() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def parse_layer(text: str) -> int | str:
    """A `--layers` entry: "final", "mean" or a hidden-state index such as -2."""
    return text if text in ("final", "mean") else int(text)


# (recipe, layer) -> the baseline rows of its first run: random init (always seed 0), raw pixels and majority do not
# depend on the training seed, so the other seeds of a recipe probe only their encoder
_BASELINES: dict[tuple[str, str], dict[str, Any]] = {}


def run(name: str, out: Path, threads: int, folds: int, layers: list[int | str], seed: int = 0) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from genlip_lit.commands.fit import GenLIPArgumentParser, GenLIPCLI, _null_on_command_line
    from genlip_lit.console import logs
    from genlip_lit.data.transforms import Preprocessing
    from genlip_lit.eval.real_images import RealImageView
    from genlip_lit.eval.transfer import transfer_evaluation
    from genlip_lit.modules.base import EncoderModule

    logs.sync_library_levels()
    _null_on_command_line()
    what, overrides = RECIPES[name]
    overrides = [*overrides, f"--seed_everything={seed}"]  # the global seed (model init); the data keep their own
    load0, wall0, cpu0 = os.getloadavg()[0], time.perf_counter(), _cpu_with_children()
    # after the overrides: an overlay config among them (the captioner's) names its own logger and callbacks
    # --threads: fit's default (auto) would adapt torch's threads to the load while training, and the figures with
    # them (float rounding differs by thread count): a run is reproducible only at a fixed count
    fixed = [f"--threads={threads}", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
             "--checkpoint.every_n_train_steps=null", "--trainer.logger.init_args.save_dir", str(out),
             "--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", str(seed)]
    cli = GenLIPCLI(model_class=EncoderModule, subclass_mode_model=True, datamodule_class=None,
                    args=["--config", CONFIG, *overrides, *fixed], parser_class=GenLIPArgumentParser,
                    save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False, run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    data.trainer = trainer
    data.prepare_data()
    data_cpu = _cpu_with_children() - cpu0
    fit0 = _cpu_with_children()
    trainer.fit(model, datamodule=data)
    fit_cpu = _cpu_with_children() - fit0
    eval0 = _cpu_with_children()
    view = RealImageView("digits", Preprocessing(data.image_size, data.mean, data.std))
    model.eval()
    by_layer = {}
    for layer in layers:  # each layer with its own random-init row (pixels and majority do not depend on it)
        result = transfer_evaluation(model, view, folds=folds, layer=layer,
                                     cached_baselines=_BASELINES.get((name, str(layer))))
        _BASELINES[(name, str(layer))] = result.details["baselines"]
        by_layer[str(result.details["layer"])] = {
            "rows": result.details["rows"], "margin_in_se": result.scalars.get("transfer_digits/margin_in_se")}
    eval_cpu = _cpu_with_children() - eval0
    return {
        "name": name, "seed": seed, "what": what, "overrides": overrides, "steps": int(trainer.global_step),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "data_cpu_s": round(data_cpu, 1), "fit_cpu_s": round(fit_cpu, 1), "eval_cpu_s": round(eval_cpu, 1),
        "wall_s": round(time.perf_counter() - wall0, 1), "load_start": round(load0, 1),
        "load_end": round(os.getloadavg()[0], 1), "threads": threads, "folds": folds,
        "num_images": result.details["num_images"], "by_layer": by_layer,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _pct(row: dict[str, Any] | None) -> str:
    return "-" if row is None else f"{100 * row['top1']:.1f} ± {100 * row['se']:.1f}"


def by_layer(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{layer: {"rows", "margin_in_se"}} of a record (records written before the layer option read "final")."""
    if "by_layer" in record:
        return record["by_layer"]
    return {"final": {"rows": record["rows"], "margin_in_se": record["margin_in_se"]}}


def table(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["| recipe | seed | what it varies | params | CPU s: data / fit / eval | wall s (load) | layer | encoder "
             "| random init | margin (SE) | raw pixels | majority |", "|" + "---|" * 12]
    for r in records:
        for layer, got in by_layer(r).items():
            p = got["rows"]
            margin = 100 * (p["encoder_linear"]["top1"] - p["random_init_linear"]["top1"])
            lines.append(
                f"| {r['name']} | {r.get('seed', 0)} | {r['what']} | {r['params_M']}M | {r['data_cpu_s']:.0f} / "
                f"{r['fit_cpu_s']:.0f} / {r['eval_cpu_s']:.0f} | {r['wall_s']:.0f} ({r['load_start']}-"
                f"{r['load_end']}) | {layer} | {_pct(p['encoder_linear'])} | {_pct(p['random_init_linear'])} | "
                f"{margin:+.1f} ({got['margin_in_se']:+.1f}) | {_pct(p['pixels_linear'])} | {_pct(p['majority'])} |")
    return "\n".join(lines) + ("\n\nLinear probe top-1 (%) on scikit-learn's 1,797 digits, 5-fold (every image held "
                               "out once), ± binomial SE; margin = encoder - random init (both read at the row's "
                               "layer: final = the final LayerNorm output, -2 = the penultimate block's output, "
                               "mean = the mean of every block's output), in units of the SE of the difference. "
                               "CPU s: eval counts every layer's probes.")


def objective(name: str) -> str:
    """The training objective of a recipe: the compare overlay it names, else GenLIP."""
    overlay = next((o for o in RECIPES[name][1] if o.startswith("experiments/compare/")), "") if name in RECIPES else ""
    return {"captioner": "captioner", "clip": "CLIP", "siglip": "SigLIP"}.get(Path(overlay).stem, "GenLIP")


def summary(path: Path, names: list[str] | None = None) -> str:
    """Mean ± spread (sample standard deviation) over the seeds of each recipe and layer: encoder, random init and
    margin (points), each seed's margin in standard errors of the difference, beside raw pixels; `names` keeps
    those recipes, in that order."""
    import statistics

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    records = sorted(map(json.loads, path.read_text().splitlines()), key=lambda r: r.get("seed", 0))  # seed order
    for r in records:
        for layer, got in by_layer(r).items():
            groups.setdefault((r["name"], layer), []).append(got)
    order = names or list(dict.fromkeys(n for n, _ in groups))

    def ms(values: list[float], sign: str = "") -> str:  # one seed: no spread to show
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):{sign}.1f}{spread}"

    lines = ["| recipe | objective | layer | seeds | encoder | random init | margin | margin in SE, per seed | "
             "raw pixels |", "|" + "---|" * 9]
    for name in order:
        for (n, layer), runs in groups.items():
            if n != name:
                continue
            rows = [got["rows"] for got in runs]
            enc = [100 * r["encoder_linear"]["top1"] for r in rows]
            rnd = [100 * r["random_init_linear"]["top1"] for r in rows]
            in_se = " / ".join(f"{got['margin_in_se']:+.1f}" for got in runs)
            pixels = ms([100 * r["pixels_linear"]["top1"] for r in rows])
            lines.append(f"| {name} | {objective(name)} | {layer} | {len(rows)} | {ms(enc)} | {ms(rnd)} | "
                         f"{ms([e - r for e, r in zip(enc, rnd)], '+')} | {in_se} | {pixels} |")
    return "\n".join(lines) + ("\n\nLinear probe top-1 (%) on scikit-learn's 1,797 digits (5-fold), mean ± standard "
                               "deviation over seeds (seed_everything; the same data).")


def picture(path: str, count: int = 16) -> None:
    """docs/transfer_scan.png: the first scenes of experiments/transfer/scan.yaml's world (top) above as many of
    scikit-learn's real digits as the transfer probe draws them (bottom), at 32 px, shown twice the size."""
    import numpy as np
    import yaml
    from PIL import Image

    from genlip_lit.data.datamodule import scene_config, synthetic_params
    from genlip_lit.data.world import contact_sheet
    from genlip_lit.eval.real_images import load_real_set

    recipe = yaml.safe_load(Path("experiments/transfer/scan.yaml").read_text())["data"]["init_args"]["synthetic"]
    config = scene_config(synthetic_params(recipe))
    side = config.image_size
    scenes = contact_sheet(0, count, count, config)
    real = Image.new("RGB", (count * side, side))
    for i, image in enumerate(load_real_set("digits").images[:count]):
        real.paste(Image.fromarray(np.asarray(image)).convert("RGB").resize((side, side), Image.Resampling.BICUBIC),
                   (i * side, 0))
    sheet = Image.new("RGB", (count * side, 2 * side + 4), (255, 255, 255))
    sheet.paste(scenes, (0, 0))
    sheet.paste(real, (0, side + 4))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", nargs="*", default=[], choices=sorted(RECIPES), help="recipes to run")
    parser.add_argument("--all", action="store_true", help="every recipe not yet in the results, in order")
    parser.add_argument("--budget-cpu-s", type=float, default=None,
                        help="stop starting recipes once this much CPU time is spent (all runs of this call)")
    parser.add_argument("--out", default="runs/sweep_transfer", help="where runs and results.jsonl go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time ~ independent of load)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--layers", default="final,-2", help="comma-separated layers the probes read, each beside "
                        "its own random init: final (the final LayerNorm output), mean, or a hidden-state index "
                        "(-2: the penultimate block's output)")
    parser.add_argument("--seeds", default="0", help="comma-separated seed_everything values (the data are the "
                        "same for every seed)")
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    parser.add_argument("--picture", metavar="PNG", help="draw the recipe's scenes above real digits and exit "
                        "(docs/transfer_scan.png)")
    parser.add_argument("--summary", action="store_true",
                        help="print mean ± spread over seeds per recipe and layer (the --recipe ones, if named)")
    args = parser.parse_args()
    out = Path(args.out)
    results = out / "results.jsonl"
    if args.picture:
        picture(args.picture)
        return 0
    if args.table or args.summary:
        print(table(results) if args.table else summary(results, args.recipe or None))
        return 0
    layers = [parse_layer(t) for t in args.layers.split(",")]
    seeds = [int(t) for t in args.seeds.split(",")]
    done = set()
    if results.exists():
        done = {(r["name"], r.get("seed", 0)) for r in map(json.loads, results.read_text().splitlines())}
    names = args.recipe or (list(RECIPES) if args.all else [])
    if not names:
        parser.error("name recipes with --recipe, or --all (or --table)")
    runs = [(n, s) for s in seeds for n in names if (n, s) not in done]  # delete a line to measure it again
    start = _cpu_with_children()
    for name, seed in runs:
        if args.budget_cpu_s is not None and _cpu_with_children() - start >= args.budget_cpu_s:
            print(f"CPU budget {args.budget_cpu_s:.0f} s spent: {name} (seed {seed}) and later runs not made",
                  file=sys.stderr)
            break
        record = run(name, out, args.threads, args.folds, layers, seed)
        out.mkdir(parents=True, exist_ok=True)
        with results.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print("\n".join(table(results).splitlines()[-2 - len(layers):-2]), flush=True)  # this run's rows
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
