"""`genlip compare`: train several configs under one harness and put their evaluations in one table.

    genlip compare experiments/compare/*.yaml --output runs/compare
    genlip compare experiments/compare/genlip.yaml experiments/ablations/*.yaml --output runs/ablations
    genlip compare a.yaml b.yaml --output out --max-steps 500 -- --trainer.accelerator gpu

Each CONFIG is composed after a shared base (`--base`, default experiments/quickstart.yaml; `--base none` for
complete configs), so data, steps, batch size, optimizer and evaluation callbacks are identical and only what
the CONFIG changes differs. Runs go one after another, each in its own process, into DIR/<config name>/.
Re-invoking is safe: a finished run (DIR/<name>/result.json with the same configuration) is not re-run, and an
interrupted one resumes exactly from its last checkpoint. The last evaluation of every run, its measured training
FLOPs per sample (the Throughput callback) and its wall time go to DIR/table.md and DIR/table.csv, and loss and
metric curves over samples seen to DIR/curves.png (read back from each run's TensorBoard or CSV logs:
`studies/compare_report.py`). Progress on stderr: runs done of all, and the steps of the run in training (read from
the plain progress lines of its fit.log), each with an ETA.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genlip_lit.data.shard_check import FIX as SHARDS_FIX
from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import write_json

DEFAULT_BASE = "experiments/quickstart.yaml"
LOG_VERSION = "tb"  # DIR/<name>/tb/: the logger's files (TensorBoard events or metrics.csv), config, checkpoints/


@dataclass
class RunSpec:
    """One entry of a comparison: a config composed after the base, with the runner's overrides."""

    name: str
    config: Path
    base: Path | None
    max_steps: int | None = None
    extra_args: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Changes when anything that shapes the run changes (file contents, step budget, extra arguments)."""
        h = hashlib.sha256()
        for path in (self.base, self.config):
            h.update(path.read_bytes() if path is not None else b"-")
        h.update(json.dumps([self.max_steps, self.extra_args]).encode())
        return h.hexdigest()[:16]

    def fit_argv(self, output: Path, resume_from: Path | None) -> list[str]:
        argv = ["fit"]
        if self.base is not None:
            argv += ["--config", str(self.base)]
        argv += [
            "--config", str(self.config),
            "--trainer.logger.init_args.save_dir", str(output),
            "--trainer.logger.init_args.name", self.name,
            "--trainer.logger.init_args.version", LOG_VERSION,
        ]
        if self.max_steps is not None:
            argv += ["--trainer.max_steps", str(self.max_steps)]
        argv += self.extra_args
        if resume_from is not None:
            argv += ["--ckpt_path", str(resume_from)]
        return argv


def plan_runs(configs: list[str], base: str | None, max_steps: int | None, extra: list[str]) -> list[RunSpec]:
    """Validate the inputs before anything runs; names are config stems (parent folder added on a clash)."""
    base_path = None if base in (None, "none") else Path(base)
    if base_path is not None and not base_path.is_file():
        raise GenLIPUserError(f"base config not found: {base_path} (pass --base PATH, or --base none)")
    paths = [Path(c) for c in configs]
    for p in paths:
        if not p.is_file():
            raise GenLIPUserError(f"config not found: {p}")
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}-{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(names)) != len(names):
        raise GenLIPUserError(f"two configs would share a run directory: {names}")
    if max_steps is not None and max_steps < 1:
        raise GenLIPUserError(f"--max-steps must be >= 1, got {max_steps}")
    return [RunSpec(n, p, base_path, max_steps, list(extra)) for n, p in zip(names, paths)]


def data_dirs(spec: RunSpec) -> list[str]:
    """The data_dir(s) a run trains on, as `genlip fit` composes them: the base's, the config's, then a
    `--data.init_args.data_dir` among the extra arguments (unreadable YAML is left for fit to name)."""
    import yaml

    found: Any = None
    for path in (spec.base, spec.config):
        try:
            config = yaml.safe_load(path.read_text()) if path is not None else None
        except (OSError, yaml.YAMLError):
            continue
        data = config.get("data") if isinstance(config, dict) else None
        init_args = data.get("init_args") if isinstance(data, dict) else None
        if isinstance(init_args, dict) and "data_dir" in init_args:
            found = init_args["data_dir"]
    args = spec.extra_args
    for i, arg in enumerate(args):
        if arg.startswith("--data.init_args.data_dir="):
            found = yaml.safe_load(arg.partition("=")[2])
        elif arg == "--data.init_args.data_dir" and i + 1 < len(args):
            found = yaml.safe_load(args[i + 1])
    return [found] if isinstance(found, str) else [str(d) for d in (found or []) if d is not None]


def check_run_data(specs: list[RunSpec]) -> None:
    """Damaged local shards are one line naming the file before the first run starts (not one failed fit per
    config)."""
    from genlip_lit.data.shard_check import check_shard_dir

    for d in dict.fromkeys(d for spec in specs for d in data_dirs(spec)):
        check_shard_dir(d)


# ---------------------------------------------------------------------------------------------------- running
def run_all(specs: list[RunSpec], output: Path, rerun: set[str], fit_command: list[str]) -> list[dict[str, Any]]:
    """Run (or skip, or resume) every spec in order; returns each run's result dict (failed ones included)."""
    from genlip_lit.console.progress import progress

    results = []
    with progress(total=len(specs), description="compare", unit="runs") as runs:
        for i, spec in enumerate(specs, 1):
            runs.set_postfix(f"now {spec.name}")
            result = run_one(spec, output, spec.name in rerun, fit_command)
            print(f"[{i}/{len(specs)}] {spec.name}: {result['status_line']}", flush=True)
            results.append(result)
            runs.advance()
        runs.set_postfix("")
    return results


# `genlip fit`'s plain progress line (callbacks/plain_progress.py), as the child writes it into fit.log
_FIT_LINE = re.compile(r"^genlip: fit: ([\d,]+)/([\d,]+) steps", re.MULTILINE)
POLL_S = 2.0


def follow_fit(proc: subprocess.Popen, log_path: Path, description: str, total: int | None) -> int:
    """Wait for a `genlip fit` child, showing its steps (read from the plain progress lines of its log) as a
    stage of the comparison's progress; returns its exit code."""
    from genlip_lit.console.progress import progress

    offset = log_path.stat().st_size if log_path.exists() else 0
    with progress(total=total, description=description, unit="steps") as steps:
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                code = None
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                fh.seek(offset)
                text = fh.read()
            cut = text.rfind("\n") + 1  # a line still being written is read next time
            offset += len(text[:cut].encode("utf-8", errors="replace"))
            found = _FIT_LINE.findall(text[:cut])
            if found:
                done, planned = (int(v.replace(",", "")) for v in found[-1])
                steps.update(completed=done, total=planned)
            if code is not None:
                return code


def run_one(spec: RunSpec, output: Path, rerun: bool, fit_command: list[str]) -> dict[str, Any]:
    run_dir = output / spec.name
    result_path = run_dir / "result.json"
    fingerprint = spec.fingerprint()
    if result_path.is_file():
        done = json.loads(result_path.read_text())
        if not rerun and done.get("fingerprint") == fingerprint:
            return {**done, "status_line": "finished earlier, not re-run"}
        if not rerun:
            raise GenLIPUserError(
                f"{run_dir} holds a finished run of a different configuration (config, base, --max-steps or "
                f"extra arguments changed); pass --rerun {spec.name} to replace it, or use another --output"
            )
    if rerun and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    attempts_path = run_dir / "attempts.json"
    attempts = json.loads(attempts_path.read_text()) if attempts_path.is_file() else []
    if attempts and attempts[-1].get("fingerprint") != fingerprint:
        raise GenLIPUserError(
            f"{run_dir} holds an interrupted run of a different configuration; pass --rerun {spec.name}"
        )
    last = run_dir / LOG_VERSION / "checkpoints" / "last.ckpt"
    resume_from = last if last.is_file() else None
    start = time.perf_counter()
    fit_argv = spec.fit_argv(output, resume_from)
    log_path = run_dir / "fit.log"
    with open(log_path, "a") as log:
        log.write(f"\n$ genlip {' '.join(fit_argv)}\n")
        log.flush()
        # the child writes plain progress lines into fit.log (its stderr is a file); follow_fit reads its steps
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GENLIP_PROGRESS": "plain"}
        proc = subprocess.Popen([*fit_command, *fit_argv], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            returncode = follow_fit(proc, log_path, spec.name, spec.max_steps)
        except BaseException:  # Ctrl-C: stop the child too; its last checkpoint lets a rerun resume
            proc.terminate()
            proc.wait()
            raise
    seconds = time.perf_counter() - start
    attempts.append({"fingerprint": fingerprint, "seconds": seconds, "returncode": returncode,
                     "resumed_from": str(resume_from) if resume_from else None})
    write_json(attempts_path, attempts, indent=1)
    if returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        damaged = [line for line in tail if line.startswith("genlip: error: ") and SHARDS_FIX in line]
        if returncode == 2 and damaged:  # every run reads the same data: the comparison stops with fit's line
            raise GenLIPUserError(f"{spec.name}: {damaged[-1].removeprefix('genlip: error: ')}")
        return {"name": spec.name, "status": "failed", "status_line": f"FAILED (exit {returncode}); last lines of "
                f"{log_path}:\n    " + "\n    ".join(tail)}
    from genlip_lit.studies.compare_report import collect_result

    try:
        result = collect_result(spec.name, str(spec.config), run_dir / LOG_VERSION)
    except Exception as err:  # the training is kept: a re-invocation resumes from its checkpoint and retries this
        return {"name": spec.name, "status": "failed",
                "status_line": f"trained, but its results could not be read ({type(err).__name__}: {err})"}
    result.update(fingerprint=fingerprint, status="finished",
                  wall_s=sum(a["seconds"] for a in attempts if a["fingerprint"] == fingerprint),
                  attempts=len(attempts))
    write_json(result_path, result, indent=1)
    resumed = f", resumed from {resume_from.name}" if resume_from else ""
    return {**result, "status_line": f"done in {seconds:.0f} s{resumed}"}


# ---------------------------------------------------------------------------------------------------- command
def build_parser() -> Any:
    from genlip_lit.commands.common import add_output, command_parser

    p = command_parser("compare", "Train configs one after another under a shared base and tabulate their "
                       "evaluations. Arguments after `--` go to every `genlip fit`.")
    p.add_argument("configs", nargs="+", type=str, help="YAML files composed after the base")
    add_output(p, help="directory for runs/<name>/, table.md, table.csv, curves.png")
    p.add_argument("--base", type=str, default=DEFAULT_BASE, help="shared base config; none = no base")
    p.add_argument("--max-steps", type=int | None, default=None, help="override trainer.max_steps for every run")
    p.add_argument("--rerun", nargs="*", type=str, default=[], help="discard these runs (names) and train them again")
    return p


def main(argv: list[str] | None = None) -> int:
    from genlip_lit.commands.common import parse

    argv = list(sys.argv[2:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parse(build_parser(), argv, repeatable=("--rerun",))
    from genlip_lit.commands.output import check_output, claim_output

    check_output(args.output, "compare", args.overwrite)
    specs = plan_runs(args.configs, args.base, args.max_steps, extra)
    check_run_data(specs)
    unknown = sorted(set(args.rerun) - {s.name for s in specs})
    if unknown:
        raise GenLIPUserError(f"--rerun names no run of this comparison: {unknown}; runs: {[s.name for s in specs]}")
    output = Path(claim_output(args.output, "compare", args.overwrite))  # a rerun resumes its own runs/
    results = run_all(specs, output, set(args.rerun), [sys.executable, "-m", "genlip_lit.cli"])

    from genlip_lit.studies.compare_report import write_reports

    table = write_reports(results, output)
    print(table)
    print(f"wrote {output / 'table.md'}, {output / 'table.csv'} and {output / 'curves.png'}")
    failed = [r["name"] for r in results if r.get("status") != "finished"]
    if failed:
        print(f"genlip compare: {len(failed)} run(s) failed: {failed} (see their fit.log)", file=sys.stderr)
        return 1
    return 0
