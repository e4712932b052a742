"""Quickstart fit steps/s per CPU thread setting, on idle cores and beside one competing busy process.

    python benchmarks/bench_threads.py                     # ~4 min on 2 cores
    python benchmarks/bench_threads.py --steps 150 --repeats 2 --json threads.json

Each setting trains the quickstart's model and data (experiments/quickstart.yaml; a 2,000-scene synthetic set of
the same kind, evaluation callbacks off) for `--warmup` + `--steps` optimizer steps in a fresh process, and
reports the steps/s of the timed steps. "busy" runs the same beside one `yes > /dev/null` (one process that keeps
a core busy, as another job on a shared machine would). Settings: `--threads 0` (torch's choice: one thread per
core, what `genlip fit` did before `--threads`), `--threads 1`, `--threads 2` with OMP_WAIT_POLICY=PASSIVE (threads
sleep instead of spinning while they wait), and `--threads auto` (genlip fit's default: callbacks/threads.py).
The load average before each run is printed: on a machine other people use, every figure is noisy. Prints a
table last (nothing asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {  # name -> (--threads value, extra environment)
    "threads 0 (torch: 1/core)": ("0", {}),
    "threads 1": ("1", {}),
    "threads 2, OMP passive": ("2", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "threads auto": ("auto", {}),
}


def child(threads: str, warmup: int, steps: int, cache: str) -> None:
    """Train in this process; print {"steps_per_s": ...} as the last line."""
    import lightning as L

    from genlip_lit.commands.fit import GenLIPCLI
    from genlip_lit.modules.base import EncoderModule

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.start = self.end = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == warmup:
                self.start = time.perf_counter()
            if trainer.global_step == warmup + steps:
                self.end = time.perf_counter()

    os.chdir(REPO)
    total = warmup + steps
    cli = GenLIPCLI(
        model_class=EncoderModule, subclass_mode_model=True, datamodule_class=None, run=False,
        args=["--config", "experiments/quickstart.yaml", f"--threads={threads}", f"--trainer.max_steps={total}",
              f"--trainer.val_check_interval={total}", "--trainer.limit_val_batches=0", "--trainer.callbacks=[]",
              "--trainer.logger=false", "--checkpoint.save_last=false", f"--trainer.default_root_dir={cache}",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
              "--data.init_args.synthetic={num_train: 2000, num_val: 64, seed: 0, image_size: 64, patch_size: 8, "
              "min_objects: 1, max_objects: 3, word_prob: 0.2, grid_align: true}",
              f"--data.init_args.cache_dir={cache}"],
        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
    )
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    from genlip_lit.callbacks.threads import AdaptiveThreads

    chosen = [c.history for c in cli.trainer.callbacks if isinstance(c, AdaptiveThreads)]
    print(json.dumps({"steps_per_s": steps / (timer.end - timer.start), "auto_chose": chosen[0] if chosen else None}))


def run_one(threads: str, env: dict[str, str], busy: bool, args: argparse.Namespace) -> dict:
    competitor = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if busy else None
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", threads, "--warmup", str(args.warmup), "--steps", str(args.steps),
             "--cache", args.cache],
            env={**os.environ, **env}, capture_output=True, text=True, check=True,
        ).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=1, help="runs per cell (the table shows the best)")
    p.add_argument("--cache", default=os.path.join(os.environ.get("GENLIP_CACHE", "/tmp"), "bench_threads"))
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--no-competitor", action="store_true", help="skip the runs beside `yes` (on a machine that "
                   "is busy already, its own load is the competitor)")
    p.add_argument("--settings", nargs="+", default=None, choices=[v[0] for v in SETTINGS.values()],
                   help="only these --threads values (default: all four settings)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child(args.child, args.warmup, args.steps, args.cache)
        return 0
    results: dict[str, dict[str, float]] = {}
    loads: list[float] = []
    for _ in range(args.repeats):
        chosen = {n: v for n, v in SETTINGS.items() if args.settings is None or v[0] in args.settings}
        for name, (threads, env) in chosen.items():  # settings take turns, so a load change hits them all
            for busy in (False,) if args.no_competitor else (False, True):
                loads.append(os.getloadavg()[0])
                run = run_one(threads, env, busy, args)
                rate = run["steps_per_s"]
                cell = results.setdefault(name, {})
                key = "busy" if busy else "idle"
                cell[key] = max(cell.get(key, 0.0), rate)
                chose = f"; auto chose {run['auto_chose']}" if run.get("auto_chose") is not None else ""
                print(f"{name:28s} {key:5s} {rate:6.2f} steps/s (load average before: {loads[-1]:.2f}{chose})",
                      file=sys.stderr, flush=True)
    base = next(iter(results.values()))["idle"]
    print(f"\nquickstart fit steps/s ({args.steps} timed steps, best of {args.repeats}; {os.cpu_count()} cores; "
          f"1-min load average before the runs {min(loads):.2f}-{max(loads):.2f})\n")
    first = next(iter(results))
    print(f"| setting | no competitor | beside 1 busy process | busy/no competitor | no competitor vs {first} |")
    print("|---|---|---|---|---|")
    for name, cell in results.items():
        busy = cell.get("busy")
        shown = (f"{busy:.2f} | {busy / cell['idle']:.2f}x" if busy is not None else "- | -")
        print(f"| {name} | {cell['idle']:.2f} | {shown} | {cell['idle'] / base:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "load_average": loads, "steps": args.steps}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
