"""Start-up cost of `genlip` commands: wall time, peak memory and what the imports cost.

    python benchmarks/bench_startup.py                 # --help, caption --help, fit --help
    python benchmarks/bench_startup.py --repeat 5 -- --version

Each command runs in a fresh interpreter (`python -m genlip_lit.cli ARGS`): wall time is the median of
`--repeat` runs, peak RSS is the child's maximum resident set, and `python -X importtime` gives the total import
time and the heaviest top-level packages (cumulative). Commands that do not train should import neither torch
nor Lightning; the table says which heavy packages each command loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "lightning", "litdata", "open_clip", "timm", "numpy", "jsonargparse", "rich", "PIL")
DEFAULT_COMMANDS = (["--help"], ["caption", "--help"], ["fit", "--help"])

# Runs one command as a child and prints its peak RSS (KiB on Linux) as JSON on the last line.
_CHILD = (
    "import json, resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(json.dumps({'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def run_once(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `python -m genlip_lit.cli ARGS`."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, sys.executable, "-m", "genlip_lit.cli", *args],
                         capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    rss_kib = json.loads(out.strip().splitlines()[-1])["maxrss_kib"]
    if sys.platform == "darwin":  # bytes there
        rss_kib /= 1024
    return wall, rss_kib / 1024


def import_profile(args: list[str]) -> tuple[float, list[tuple[str, float]], list[str]]:
    """(total import seconds, [(top-level package, cumulative seconds)] heaviest first, heavy packages loaded)."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-m", "genlip_lit.cli", *args],
                         capture_output=True, text=True).stderr
    total_us = 0
    top: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = (part.strip() for part in line[len("import time:"):].split("|"))
        total_us += int(self_us)
        if not name.startswith(" ") and "." not in name.strip():  # a top-level import (depth 0)
            top[name.strip()] = top.get(name.strip(), 0) + int(cumulative_us) / 1e6
    loaded = sorted({n.strip().split(".")[0] for n in _names(err)} & set(HEAVY))
    return total_us / 1e6, sorted(top.items(), key=lambda kv: -kv[1]), loaded


def _names(importtime_err: str) -> list[str]:
    return [line.rsplit("|", 1)[1] for line in importtime_err.splitlines()
            if line.startswith("import time:") and "self [us]" not in line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command for the wall-time median")
    parser.add_argument("command", nargs="*", help="one genlip command line (after --); default: three commands")
    opts = parser.parse_args(argv)
    commands = [opts.command] if opts.command else [list(c) for c in DEFAULT_COMMANDS]
    where = subprocess.run([sys.executable, "-c", "import genlip_lit; print(genlip_lit.__file__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs; genlip_lit from {os.path.dirname(where)} "
          "(the current directory comes first: run it from the checkout to measure)")
    print(f"| command | wall s (median of {opts.repeat}) | peak RSS MiB | import s | heaviest imports (cumulative s) "
          "| heavy packages loaded |")
    print("|---|---|---|---|---|---|")
    for args in commands:
        runs = [run_once(args) for _ in range(opts.repeat)]
        wall = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        total, top, loaded = import_profile(args)
        heaviest = ", ".join(f"{name} {sec:.2f}" for name, sec in top[:3])
        print(f"| genlip {' '.join(args)} | {wall:.2f} | {rss:.0f} | {total:.2f} | {heaviest} | "
              f"{', '.join(loaded) or 'none'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
