"""Re-measure a README section and print its table: every README figure comes from a command.

    python benchmarks/readme_figures.py --section quickstart                  # seed 0, as the README runs it
    python benchmarks/readme_figures.py --section quickstart --seeds 0 1 2    # the three-seed table
    python benchmarks/readme_figures.py --section quickstart --seeds 0 1 2 --threads 1   # at a fixed thread count
    python benchmarks/readme_figures.py --table --out runs/readme_figures    # seeds recorded so far, + mean +- sd
    python benchmarks/readme_figures.py --section digits --ckpt runs/quickstart   # the digits probe table
    python benchmarks/readme_figures.py --list                                # which README tables are covered

`quickstart` runs exactly the README's two commands per seed, as subprocesses with the default thread count:
`genlip fit --config experiments/quickstart.yaml --seed_everything N` (into a fresh `$GENLIP_CACHE` per seed
unless `--reuse-cache`, so data generation is in the time, as on a fresh machine) and `genlip caption-eval
--objects 1 2 3`; it reports wall and CPU seconds of the fit (CPU: the fit process and its data workers),
val/loss, the share of objects named with the right colour and shape in 1/2/3-object scenes, and the last
value of each evaluation callback (zero-shot, CIDEr-D, probes). Other sections call the command or benchmark
script that made their README table. The quickstart figures are per commit: a change of the recipe, the model
or of float rounding (thread count, library versions) moves them by a few points, so the README states the
commit and `tests/test_readme_figures.py` keeps its quickstart block naming the committed config's steps and batch.

`--threads N` passes `--threads N` to every `genlip fit` (and caption-eval): the figures are deterministic per
thread count, whatever the load (threads change the order of float sums, load does not), so a table measured on a
busy machine at a stated thread count is what an idle one reproduces; only the wall times depend on the load,
which the table's caption records (load average at start and end). Without it fit uses its default (`auto`, which
follows the load: figures then depend on the load too).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIG = "experiments/quickstart.yaml"
ROWS = "quickstart_rows.jsonl"  # in --out: one JSON line per finished quickstart seed
GENLIP = [sys.executable, "-m", "genlip_lit.cli"]  # `genlip` of this interpreter (no activated venv needed)

# section -> (README table it re-measures, how)
SECTIONS: dict[str, tuple[str, str]] = {
    "quickstart": ("'After the quickstart' figures and the evaluation-callback figures below them",
                   "genlip fit + genlip caption-eval per seed"),
    "digits": ("the digits probe table (encoder / raw pixels / random init)",
               "genlip probe on scikit-learn's digits written as a 32 px ImageFolder (needs --ckpt)"),
    "eval": ("the embedded-scenes probe figures after the digits table", "genlip eval --config experiments/eval.yaml"
             " (needs --ckpt)"),
    "compare": ("'Baselines under the same harness' table", "genlip compare experiments/compare/*.yaml"),
    "ablations": ("the ablations table", "genlip compare experiments/compare/genlip.yaml experiments/ablations/*"),
    "parity": ("the parity figures of 'Use a released GenLIP model'", "benchmarks/parity_fixtures.py"),
    "plan": ("the paper-runs table of 'Plan a run'", "benchmarks/plan_paper_runs.py"),
    "benchmarks": ("the 'Performance and scale' benchmark table",
                   "benchmarks/bench_lm_head.py, bench_generate.py, bench_train_step.py"),
}
NOT_COVERED = [
    "stage 2 resolution table (stage2_quickstart.yaml fits, then genlip eval-res: ~1 h on 2 cores)",
    "llm-probe table (needs the SmolLM2 weights, not shipped)",
    "presets table (printed from genlip_lit/models/config.py; no measurement)",
    "plan-vs-real memory table (python -m pytest tests/plan/test_plan_memory.py asserts it)",
]


def _run(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> tuple[float, float]:
    """Run a command to the end; (wall s, CPU s of it and its children). Output goes to `log` (or through)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") if log else open(os.devnull, "w") as sink:
        out = sink if log else None
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT if log else None).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        sys.exit(f"readme_figures: `{' '.join(cmd)}` failed (exit {rc}){f'; see {log}' if log else ''}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _last(scalars: dict[str, list[tuple[int, float]]], tag: str) -> float | None:
    return scalars[tag][-1][1] if scalars.get(tag) else None


def _thread_args(threads: int | None) -> list[str]:
    return [] if threads is None else ["--threads", str(threads)]


def quickstart(seeds: list[int], out: Path, config: str, reuse_cache: bool,
               threads: int | None = None) -> list[dict[str, Any]]:
    from genlip_lit.studies.compare_report import read_scalars

    rows = []
    for seed in seeds:
        load_start = os.getloadavg()[0]
        env = dict(os.environ)
        if not reuse_cache:
            env["GENLIP_CACHE"] = str(out / f"cache_seed{seed}")  # fresh: data generation is in the time
        run_dir = out / "quickstart" / f"seed{seed}"
        fit = [*GENLIP, "fit", "--config", config, "--seed_everything", str(seed),
               "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.version", f"seed{seed}",
               *_thread_args(threads)]
        wall, cpu = _run(fit, env, out / f"fit_seed{seed}.log")
        _run([*GENLIP, "caption-eval", "--ckpt", str(run_dir), "--objects", "1", "2", "3", "--output", str(run_dir),
              "--overwrite", *_thread_args(threads)],  # beside the run's own files
             env, out / f"caption_eval_seed{seed}.log")
        captioned = json.loads((run_dir / "caption_eval.json").read_text())
        accuracy = {r["objects_per_scene"]: 100 * r["object_accuracy"] for r in captioned}
        floor = {r["objects_per_scene"]: 100 * r["constant_object_accuracy"] for r in captioned
                 if "constant_object_accuracy" in r}  # the most frequent training caption for every scene
        scalars = read_scalars(run_dir)
        rows.append({"seed": seed, "threads": threads, "wall_s": wall, "cpu_s": cpu, "val_loss": _last(scalars, "val/loss"),
                     "objects_pct": accuracy, "objects_constant_pct": floor, "zero_shot": _last(scalars, "zero_shot/top1"),
                     "cider": _last(scalars, "captions/cider"), "linear_probe": _last(scalars, "probe/linear_top1"),
                     "attentive_probe": _last(scalars, "probe/attentive_top1")})
        rows[-1]["load_avg"] = [load_start, os.getloadavg()[0]]
        print(json.dumps(rows[-1]), flush=True)
        with open(out / ROWS, "a") as sink:  # every finished seed, so runs in parallel can be tabulated together
            sink.write(json.dumps(rows[-1]) + "\n")
    return rows


def quickstart_table(rows: list[dict[str, Any]]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = ["| seed | 1 / 2 / 3 objects named right | val/loss | zero-shot | CIDEr-D | linear / attentive probe "
             "| fit wall s | fit CPU s |", "|" + "---|" * 8]
    for r in rows:
        acc = " / ".join(f"{r['objects_pct'].get(n, float('nan')):.1f}%" for n in (1, 2, 3))
        cider = "-" if r["cider"] is None else f"{r['cider']:.2f}"
        loss = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        lines.append(f"| {r['seed']} | {acc} | {loss} | {pct(r['zero_shot'])} | {cider} | "
                     f"{pct(r['linear_probe'])} / {pct(r['attentive_probe'])} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    return "\n".join(lines)


SPREAD_COLUMNS = [  # (header, row -> value, format) of the mean +- spread table
    ("1-object scenes named right", lambda r: r["objects_pct"].get(1), "{:.1f}%"),
    ("2-object", lambda r: r["objects_pct"].get(2), "{:.1f}%"),
    ("3-object", lambda r: r["objects_pct"].get(3), "{:.1f}%"),
    ("val/loss", lambda r: r["val_loss"], "{:.4f}"),
    ("zero-shot", lambda r: None if r["zero_shot"] is None else 100 * r["zero_shot"], "{:.1f}%"),
    ("CIDEr-D", lambda r: r["cider"], "{:.2f}"),
    ("linear probe", lambda r: None if r["linear_probe"] is None else 100 * r["linear_probe"], "{:.1f}%"),
    ("attentive probe", lambda r: None if r["attentive_probe"] is None else 100 * r["attentive_probe"], "{:.1f}%"),
]


def spread_table(rows: list[dict[str, Any]]) -> str:
    """One line per figure: mean, sample standard deviation and min-max over the rows (seeds)."""
    import statistics

    lines = [f"| figure | mean +- sd over {len(rows)} seeds | min - max |", "|---|---|---|"]
    for header, value, fmt in SPREAD_COLUMNS:
        values = [v for v in map(value, rows) if v is not None]
        if not values:
            continue
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {header} | {fmt.format(statistics.fmean(values))} +- {fmt.format(sd).rstrip('%')} | "
                     f"{fmt.format(min(values))} - {fmt.format(max(values))} |")
    return "\n".join(lines)


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The finished seeds recorded in `out` (quickstart runs append one JSON line each), by seed."""
    path = out / ROWS
    if not path.is_file():
        sys.exit(f"readme_figures: no {path} (run --section quickstart with this --out first)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:  # JSON keys are strings
        for key in ("objects_pct", "objects_constant_pct"):
            row[key] = {int(k): v for k, v in (row.get(key) or {}).items()}
    return sorted(rows, key=lambda r: r["seed"])


def write_digits(root: Path) -> Path:
    """scikit-learn's 1,797 handwritten digits as a 10-class ImageFolder of 32 px RGB PNGs (bundled, no download)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR)
        img.convert("RGB").save(folder / f"{i}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=sorted(SECTIONS), default="quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="quickstart: --seed_everything values")
    parser.add_argument("--config", default=CONFIG, help="quickstart: the config the README runs")
    parser.add_argument("--out", default="runs/readme_figures", help="where runs, logs and caches go")
    parser.add_argument("--reuse-cache", action="store_true", help="quickstart: keep $GENLIP_CACHE (no data "
                        "generation in the time once it is cached)")
    parser.add_argument("--threads", type=int, help="quickstart / compare / ablations: `--threads N` for every "
                        "genlip fit (figures are deterministic per thread count; default: fit's own, `auto`)")
    parser.add_argument("--ckpt", help="digits / eval: the quickstart checkpoint (or its run directory)")
    parser.add_argument("--list", action="store_true", help="print which README tables are covered and exit")
    parser.add_argument("--table", action="store_true", help="quickstart: print the tables of the seeds already "
                        "recorded in --out (runs of several invocations, e.g. seeds run in parallel) and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (table, how) in SECTIONS.items():
            print(f"{name:11s} {table}: {how}")
        print("not covered: " + "; ".join(NOT_COVERED))
        return 0
    out = Path(args.out).resolve()
    if args.table:
        rows = read_rows(out)
        print(quickstart_table(rows) + ("\n\n" + spread_table(rows) if len(rows) > 1 else ""))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    section = args.section
    if section in ("digits", "eval") and not args.ckpt:
        parser.error(f"--section {section} needs --ckpt (a quickstart checkpoint or run directory)")
    if section == "quickstart":
        rows = quickstart(args.seeds, out, args.config, args.reuse_cache, args.threads)
        threads = "fit's default threads" if args.threads is None else f"--threads {args.threads}"
        print(f"\n{args.config}, commit {_commit()}, {os.cpu_count()} CPUs, {threads}\n" + quickstart_table(rows))
        if len(rows) > 1:
            print("\n" + spread_table(rows))
    elif section == "digits":
        data = write_digits(out / "digits") if not (out / "digits").exists() else out / "digits"
        _run([*GENLIP, "probe", "--ckpt", args.ckpt, "--data", str(data), "--output", str(out / "digits_probe")])
    elif section == "eval":
        _run([*GENLIP, "eval", "--ckpt", args.ckpt, "--config", "experiments/eval.yaml", "--output",
              str(out / "eval")])
    elif section in ("compare", "ablations"):
        configs = (sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments/compare").glob("*.yaml"))
                   if section == "compare" else ["experiments/compare/genlip.yaml",
                                                 *sorted(str(p.relative_to(REPO))
                                                         for p in (REPO / "experiments/ablations").glob("*.yaml"))])
        passed = ["--", *_thread_args(args.threads)] if args.threads is not None else []
        _run([*GENLIP, "compare", *configs, "--output", str(out / section), *passed])
        print((out / section / "table.md").read_text())
    else:
        scripts = {"parity": ["parity_fixtures.py"], "plan": ["plan_paper_runs.py"],
                   "benchmarks": ["bench_lm_head.py", "bench_generate.py", "bench_train_step.py"]}[section]
        for script in scripts:
            _run([sys.executable, str(REPO / "benchmarks" / script)])
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
