"""Real corpora -> litdata shards: the engine behind `genlip optimize --input ...`.

Work is split into the source's `Unit`s (one tar shard, one parquet row group, a slice of a file list or a
manifest). Each unit is cleaned and written by one worker as its own litdata chunks (`unit_writer.py`), then
marked done in `.genlip_work/`. The split indexes (`train/index.json`, `val/index.json`) are merged from the
finished units in unit order, so the output does not depend on the worker count, an interrupted run resumes unit
by unit, and `--append` adds units. One run at a time holds the output (`output_lock.py`); a run that stops
early says the exact command that finishes it (also kept in the plan, for `genlip fit`'s data check).

The train/val split is a hash of the stored image bytes: deterministic, independent of layout, order and worker
count, and exact duplicates of an image always land in the same split (no train/val leakage through copies).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

from genlip_lit.data.shards import (
    LOCK_FILE,
    META_FILE,
    PLAN_FILE,
    REPORT_FILE,
    SPLITS,
    WORK_DIR,
    finish_command,
)
from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.output_lock import output_lock
from genlip_lit.ingest.sources import Source, Unit
from genlip_lit.ingest.unit_writer import (
    EXAMPLES_PER_REASON,
    IngestOptions,
    process_unit,
    split_of,
)
from genlip_lit.ingest.workers import WorkerDied, run_jobs
from genlip_lit.storage.paths import read_json, write_json

log = logging.getLogger(__name__)

FIELDS = ["image", "caption", "key", "label"]


class IngestStopped(GenLIPUserError):
    """The run stopped part-way (Ctrl-C, SIGTERM, a worker that died); the output is resumable."""


def merge_split(out_dir: str, split: str, unit_ids: Sequence[int]) -> int:
    """Write `<split>/index.json` from the finished units' indexes, in unit order; returns the sample count."""
    work_dir = os.path.join(out_dir, WORK_DIR)
    chunks: list[dict[str, Any]] = []
    config: dict[str, Any] | None = None
    for unit_id in unit_ids:
        path = os.path.join(work_dir, f"{split}-{unit_id}.index.json")
        if not os.path.exists(path):
            continue  # this unit kept nothing for this split
        part = read_json(path)
        if config is None:
            config = part["config"]
        elif part["config"].get("data_format") != config.get("data_format"):
            raise GenLIPUserError(f"unit {unit_id} was written with another sample layout; rerun with --overwrite")
        chunks.extend(part["chunks"])
    index_path = os.path.join(out_dir, split, "index.json")
    if config is None:
        if os.path.exists(index_path):
            os.remove(index_path)
        return 0
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    write_json(index_path, {"chunks": chunks, "config": config, "updated_at": str(time.time())})
    return sum(int(c["chunk_size"]) for c in chunks)


# -------------------------------------------------------------------------------------------- the job
def _tally(refused: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """Files refused while listing the inputs, by reason (counted in the report like skipped samples)."""
    counts = collections.Counter(reason for _, reason, _ in refused)
    examples: dict[str, list[str]] = {}
    for path, reason, detail in refused:
        if len(examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
            examples[reason].append(detail or path)
    return {"skipped": dict(sorted(counts.items())), "examples": examples}


def _run_for(source: Source, units: list[Unit], first_id: int) -> dict[str, Any]:
    """One ingestion run in the plan: what was read, how, and its units under their ids."""
    return {
        "format": source.format,
        "inputs": source.paths,
        "caption_fields": source.caption_fields,
        "label_field": source.label_field,
        "image_field": source.image_field,
        "read_limits": dataclasses.asdict(source.limits),
        "refused": _tally(source.refused),
        "units": {str(first_id + i): u.describe() for i, u in enumerate(units)},
    }


def plan_units(plan: dict[str, Any]) -> dict[int, Unit]:
    return {int(k): Unit(**v) for run in plan["runs"] for k, v in run["units"].items()}


def plan_inputs(plan: dict[str, Any]) -> list[str]:
    return [p for run in plan["runs"] for p in run["inputs"]]


CLASSES_FILE = "classes.txt"  # the class names, one a line (line i = label i), beside genlip_meta.json
WRITTEN = (*SPLITS, META_FILE, REPORT_FILE, WORK_DIR, CLASSES_FILE)  # what an --overwrite may delete


def _remove_outputs(out_dir: str) -> None:
    for name in WRITTEN:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def _prepare(out_dir: str, source: Source, units: list[Unit], options: IngestOptions, mode: str,
             resume_command: str | None) -> dict[str, Any]:
    """Create or reopen the output; returns the plan: the shared options and every run (`--append` adds one)."""
    work_dir = os.path.join(out_dir, WORK_DIR)
    plan_path = os.path.join(work_dir, PLAN_FILE)
    has_plan = os.path.exists(plan_path)
    complete = os.path.exists(os.path.join(out_dir, META_FILE))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise GenLIPUserError(f"output {out_dir!r} exists and is not a directory")
    present = set(os.listdir(out_dir)) - {LOCK_FILE} if os.path.isdir(out_dir) else set()
    if mode == "overwrite" and present:
        if not (has_plan or complete or present <= set(WRITTEN)):
            raise GenLIPUserError(
                f"--overwrite: {out_dir!r} holds files genlip optimize did not write; refusing to delete them"
            )
        _remove_outputs(out_dir)
        present = set()
    if not present:
        if mode in ("resume", "append"):
            raise GenLIPUserError(f"--{mode}: {out_dir!r} holds no earlier run")
        os.makedirs(work_dir, exist_ok=True)
        plan = {"options": options.to_dict(), "runs": [_run_for(source, units, 0)]}
        _note_command(plan, resume_command)
        write_json(plan_path, plan)
        return plan
    if not has_plan:
        raise GenLIPUserError(
            f"output directory {out_dir!r} is not empty and was not written by `genlip optimize --input`: "
            "choose another path or pass --overwrite"
        )
    plan = read_json(plan_path)
    plan["options"] = {"caption_lines": "all", **plan["options"]}  # written before --caption-lines: all lines
    if plan["options"] != options.to_dict():
        raise GenLIPUserError(
            f"the image/split options differ from those {out_dir!r} was written with ({plan['options']}): "
            f"use the same options{'' if complete else f' (finish it with {finish_command(plan)})'}, or --overwrite"
        )
    last = plan["runs"][-1]
    if mode == "resume":
        if complete:
            raise GenLIPUserError(f"{out_dir!r} is already complete: nothing to resume (use --append to add inputs)")
        first_id = min(int(k) for k in last["units"]) if last["units"] else 0
        if _run_for(source, units, first_id) != last:
            raise GenLIPUserError(
                f"--resume: the inputs, fields or read limits differ from the interrupted run in {out_dir!r} "
                f"(it read {last['inputs']} as {last['format']}); finish it with {finish_command(plan)}, or --overwrite"
            )
        if resume_command and _note_command(plan, resume_command):
            write_json(plan_path, plan)
        return plan
    if mode == "append":
        if not complete:
            raise GenLIPUserError(f"--append: {out_dir!r} is an unfinished run; finish it with {finish_command(plan)} "
                                  "first")
        again = sorted(set(plan_inputs(plan)) & set(source.paths))
        if again:
            raise GenLIPUserError(f"--append: {again} already went into {out_dir!r}")
        first_id = 1 + max(plan_units(plan), default=-1)
        plan["runs"].append(_run_for(source, units, first_id))
        _note_command(plan, resume_command)
        write_json(plan_path, plan)
        os.remove(os.path.join(out_dir, META_FILE))  # incomplete again until the new units are merged
        return plan
    if complete:
        raise GenLIPUserError(
            f"{out_dir!r} already holds a dataset: pass --append to add these inputs, or --overwrite to replace it"
        )
    raise GenLIPUserError(
        f"{out_dir!r} holds an interrupted run ({len(_done_units(out_dir))} of {len(plan_units(plan))} units "
        f"done): finish it with {finish_command(plan)}, or pass --overwrite to start over"
    )


def _note_command(plan: dict[str, Any], resume_command: str | None) -> bool:
    """Keep the command that finishes this run (and where it was typed) in the plan; True if it changed."""
    before = (plan.get("resume_command"), plan.get("resume_cwd"))
    plan["resume_command"], plan["resume_cwd"] = resume_command, os.getcwd()
    return before != (plan["resume_command"], plan["resume_cwd"])


def _done_units(out_dir: str) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    for path in glob.glob(os.path.join(out_dir, WORK_DIR, "unit-*.json")):
        unit_id = int(os.path.basename(path)[len("unit-") : -len(".json")])
        done[unit_id] = read_json(path)
    return done


def _run_job(job: tuple[int, Unit], source: Source, out_dir: str, options: IngestOptions) -> dict[str, Any]:
    """A worker's job (module level, so spawn can pickle it; calls `process_unit` through this module)."""
    unit_id, unit = job
    return process_unit(source, unit, unit_id, out_dir, options)


def optimize_corpus(
    source: Source,
    output_dir: str,
    options: IngestOptions = IngestOptions(),  # noqa: B008 - frozen dataclass
    num_workers: int = 1,
    mode: str = "new",
    progress: bool = False,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Ingest `source` into `output_dir`; `mode` is new | overwrite | resume | append. Returns the report.

    `resume_command` is the command line that finishes this run if it stops early (kept in the plan and named
    by every message about an unfinished run). Raises `IngestStopped` when interrupted or when a worker dies,
    and `GenLIPUserError` when no sample at all was kept.
    """
    if mode not in ("new", "overwrite", "resume", "append"):
        raise ValueError(f"unknown mode {mode!r}")
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    units = source.units()  # structural checks happen here, before anything is written
    with output_lock(output_dir):
        plan = _prepare(output_dir, source, units, options, mode, resume_command)
        return _run(source, output_dir, options, plan, num_workers, progress)


def _run(source: Source, output_dir: str, options: IngestOptions, plan: dict[str, Any], num_workers: int,
         progress: bool) -> dict[str, Any]:
    planned = plan_units(plan)
    done = _done_units(output_dir)
    todo = [(uid, unit) for uid, unit in sorted(planned.items()) if uid not in done]
    with _unit_progress(progress, len(planned), len(planned) - len(todo)) as bar:
        return _run_units(source, output_dir, options, plan, num_workers, planned, done, todo, bar)


def _unit_progress(enabled: bool, total: int, resumed: int) -> Any:
    """Units done of all (a resumed run starts at the units done before; its rate counts new work only), with the
    images read, kept and skipped so far after the counts. A unit's image count is known only once it is read."""
    from genlip_lit.console.progress import progress

    bar = progress(total=total, description="optimize", unit="units", mode=None if enabled else "off")
    bar.resume_at(resumed)
    return bar


def _run_units(source: Source, output_dir: str, options: IngestOptions, plan: dict[str, Any], num_workers: int,
               planned: dict[int, Unit], done: dict[int, dict[str, Any]], todo: list[tuple[int, Unit]],
               bar: Any) -> dict[str, Any]:
    start = time.perf_counter()
    fresh: dict[int, dict[str, Any]] = {}
    tally = {"kept": 0, "skipped": 0}

    def finished(uid: int, result: dict[str, Any]) -> None:
        fresh[uid] = result
        tally["kept"] += sum(result["kept"].values())
        tally["skipped"] += sum(result["skipped"].values())
        images = tally["kept"] + tally["skipped"]
        rate = images / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(f"{images:,} images ({tally['kept']:,} kept, {tally['skipped']:,} skipped), "
                        f"{rate:,.0f} images/s")
        bar.advance()

    def stopped(what: str) -> IngestStopped:
        return IngestStopped(f"{what} after {len(done) + len(fresh)} of {len(planned)} units; the output "
                             f"{output_dir} is resumable: finish it with {finish_command(plan)}")

    try:
        if min(num_workers, len(todo)) <= 1:
            for uid, unit in todo:
                finished(uid, process_unit(source, unit, uid, output_dir, options))
        else:
            work = functools.partial(_run_job, source=source, out_dir=output_dir, options=options)
            run_jobs(todo, work, num_workers, finished)
    except KeyboardInterrupt:
        raise stopped("interrupted") from None
    except WorkerDied as exc:
        raise stopped(str(exc)) from None
    except GenLIPUserError:
        raise
    except Exception as exc:  # a bug or a full disk: say how to go on, keep the traceback
        exc.add_note(f"the output {output_dir} is resumable: finish it with {finish_command(plan)}")
        raise
    seconds = time.perf_counter() - start
    done.update(fresh)
    counts = {split: merge_split(output_dir, split, sorted(planned)) for split in SPLITS}
    report = _report(plan, done, fresh, counts, seconds, num_resumed=len(planned) - len(todo))
    write_json(os.path.join(output_dir, REPORT_FILE), report)
    if report["kept_total"] == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in report["skipped"].items()) or "no samples found"
        raise GenLIPUserError(
            f"kept 0 of {report['skipped_total']} samples ({reasons}): nothing to train on; see "
            f"{os.path.join(output_dir, REPORT_FILE)}, fix the inputs or options and rerun with --overwrite"
        )
    meta = {
        "source": "+".join(dict.fromkeys(run["format"] for run in plan["runs"])),
        "format_version": 1,
        "fields": FIELDS,
        "num_train": counts["train"],
        "num_val": counts["val"],
        "class_names": plan["options"]["class_names"],
        "inputs": plan_inputs(plan),
        "runs": [{k: v for k, v in run.items() if k not in ("units", "refused")} for run in plan["runs"]],
        "options": plan["options"],
    }
    if meta["class_names"]:  # ImageFolder's classes.txt: the ids' names for tools that do not read the meta
        with open(os.path.join(output_dir, CLASSES_FILE), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{name}\n" for name in meta["class_names"]))
    write_json(os.path.join(output_dir, META_FILE), meta)  # written last: its presence marks a complete dataset
    return report


def _report(
    plan: dict[str, Any],
    done: dict[int, dict[str, Any]],
    fresh: dict[int, dict[str, Any]],
    counts: dict[str, int],
    seconds: float,
    num_resumed: int,
) -> dict[str, Any]:
    skipped: collections.Counter = collections.Counter()
    examples: dict[str, list[str]] = {}
    parts = [run.get("refused", {}) for run in plan["runs"]] + [done[uid] for uid in sorted(done)]
    for part in parts:  # files refused while listing, then every unit's skips
        skipped.update(part.get("skipped", {}))
        for reason, keys in part.get("examples", {}).items():
            room = 2 * EXAMPLES_PER_REASON - len(examples.setdefault(reason, []))
            examples[reason].extend(keys[: max(0, room)])
    run_images = sum(sum(r["kept"].values()) + sum(r["skipped"].values()) for r in fresh.values())
    return {
        "format": "+".join(dict.fromkeys(run["format"] for run in plan["runs"])),
        "inputs": plan_inputs(plan),
        "kept": counts,
        "kept_total": sum(counts.values()),
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "skip_examples": examples,
        "captions_cut": sum(r.get("captions_cut", 0) for r in done.values()),
        "caption_lines": plan["options"].get("caption_lines", "all"),
        "multiline_sidecars": sum(r.get("multiline_sidecars", 0) for r in done.values()),
        "most_sidecar_lines": max((r.get("most_sidecar_lines", 0) for r in done.values()), default=0),
        "bytes_in": sum(r["bytes_in"] for r in done.values()),
        "bytes_out": sum(r["bytes_out"] for r in done.values()),
        "units": len(plan_units(plan)),
        "units_from_earlier_runs": num_resumed,
        "seconds": round(seconds, 3),
        "images_this_run": run_images,
        "images_per_s": round(run_images / seconds, 1) if seconds > 0 else None,
    }


def summary_line(report: dict[str, Any], output_dir: str) -> str:
    """The one line `genlip optimize` prints."""
    skipped = ", ".join(f"{k} {v}" for k, v in report["skipped"].items())
    kept = report["kept"]
    cut = f", {report['captions_cut']} captions cut to --max-caption-chars" if report.get("captions_cut") else ""
    return (
        f"kept {report['kept_total']} ({kept['train']} train, {kept['val']} val), skipped {report['skipped_total']}"
        f"{f' ({skipped})' if skipped else ''}{cut} from {report['units']} {report['format']} units in "
        f"{report['seconds']:.1f} s ({report['images_per_s'] or 0:.0f} images/s) -> {output_dir} "
        f"(report: {REPORT_FILE})"
    )


__all__ = ["IngestOptions", "IngestStopped", "merge_split", "optimize_corpus", "split_of", "summary_line"]
