"""Real corpora -> litdata shards: the engine behind `genlip optimize --input ...`.

Work is split into the source's `Unit`s (one tar shard, one parquet row group, a slice of a file list or a
manifest). Each unit is cleaned (`cleaning.py`) and written by one worker as its own litdata chunks
(`chunk-<unit>-<n>.bin`, through litdata's `BinaryWriter`), then marked done in `.genlip_work/`. The split
indexes (`train/index.json`, `val/index.json`) are merged from the finished units in unit order, so the output
does not depend on the worker count, an interrupted run resumes unit by unit, and `--append` adds units.

The train/val split is a hash of the stored image bytes: deterministic, independent of layout, order and worker
count, and exact duplicates of an image always land in the same split (no train/val leakage through copies).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from PIL import Image

from genlip_lit.data.shards import META_FILE, SPLITS
from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.cleaning import ImagePolicy, Skip, clean_caption, clean_image, clean_label
from genlip_lit.ingest.sources import ShardReadError, Source, Unit

log = logging.getLogger(__name__)

WORK_DIR = ".genlip_work"
PLAN_FILE = "plan.json"
REPORT_FILE = "genlip_report.json"
FIELDS = ["image", "caption", "key", "label"]
EXAMPLES_PER_REASON = 5  # skipped sample keys kept per reason in the report, to find the culprits


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    """Everything that decides what the shards hold (recorded in the plan; a resume must not change it)."""

    policy: ImagePolicy = ImagePolicy()
    val_fraction: float = 0.01
    class_names: tuple[str, ...] | None = None
    chunk_bytes: str = "64MB"

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise GenLIPUserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        return d


def split_of(image: bytes, val_fraction: float) -> str:
    """'val' for a `val_fraction` share of images, chosen by content hash."""
    if val_fraction <= 0:
        return "train"
    u = int.from_bytes(hashlib.sha1(image).digest()[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "train"


@dataclasses.dataclass
class UnitStats:
    kept: dict[str, int] = dataclasses.field(default_factory=lambda: {s: 0 for s in SPLITS})
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def skip(self, reason: str, key: str, detail: str) -> None:
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(f"{key}: {detail}" if detail else key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": dict(self.kept),
            "skipped": dict(self.skipped),
            "examples": self.examples,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 3),
        }


class _SplitWriter:
    """litdata `BinaryWriter` for one (unit, split), created on first use; chunk names carry the unit id."""

    def __init__(self, out_dir: str, split: str, unit_id: int, chunk_bytes: str) -> None:
        self.dir = os.path.join(out_dir, split)
        self.unit_id = unit_id
        self.chunk_bytes = chunk_bytes
        self.writer: Any = None
        self.count = 0
        for stale in glob.glob(os.path.join(self.dir, f"chunk-{unit_id}-*.bin")):  # from an interrupted try
            os.remove(stale)

    def add(self, sample: dict[str, Any]) -> None:
        if self.writer is None:
            from litdata.streaming.writer import BinaryWriter

            os.makedirs(self.dir, exist_ok=True)
            self.writer = BinaryWriter(self.dir, chunk_bytes=self.chunk_bytes)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the inferred data format once per rank
            self.writer.add_item(self.count, sample)
        self.count += 1

    def finish(self, work_dir: str) -> None:
        """Write the last chunk and park this unit's index in the work dir until the merge."""
        if self.writer is None:
            return
        self.writer.done()
        os.replace(
            os.path.join(self.dir, f"{self.unit_id}.index.json"),
            os.path.join(work_dir, f"{os.path.basename(self.dir)}-{self.unit_id}.index.json"),
        )


def _class_ids(options: IngestOptions) -> dict[str, int] | None:
    if options.class_names is None:
        return None
    return {name: i for i, name in enumerate(options.class_names)}


@contextlib.contextmanager
def _writer_rank(unit_id: int) -> Iterator[None]:
    """litdata's BinaryWriter names chunks and its index after its rank, read from this variable; one rank per
    unit keeps the names of all units apart. Restored afterwards so nothing else in the process sees it."""
    before = os.environ.get("DATA_OPTIMIZER_GLOBAL_RANK")
    os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = str(unit_id)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DATA_OPTIMIZER_GLOBAL_RANK", None)
        else:
            os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = before


def process_unit(source: Source, unit: Unit, unit_id: int, out_dir: str, options: IngestOptions) -> dict[str, Any]:
    """Clean and write one unit; returns its stats (also stored as the unit's done-marker)."""
    with _writer_rank(unit_id):
        return _process_unit(source, unit, unit_id, out_dir, options)


def _process_unit(source: Source, unit: Unit, unit_id: int, out_dir: str, options: IngestOptions) -> dict[str, Any]:
    start = time.perf_counter()
    work_dir = os.path.join(out_dir, WORK_DIR)
    stats = UnitStats()
    writers = {s: _SplitWriter(out_dir, s, unit_id, options.chunk_bytes) for s in SPLITS}
    class_ids = _class_ids(options)
    records: Iterator[Any] = source.read(unit)
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except ShardReadError as exc:
            stats.skip("unreadable_shard", os.path.basename(exc.path), str(exc))
            break
        stats.bytes_in += record.source_bytes
        try:
            if record.image is None:
                raise Skip(record.error_reason, record.error or "")
            caption = clean_caption(record.caption)  # cheap checks before the image is decoded
            label = clean_label(record.label, class_ids)
            image, _, _ = clean_image(record.image, options.policy)
        except Skip as skip:
            stats.skip(skip.reason, record.key, skip.detail)
            continue
        split = split_of(image, options.val_fraction)
        writers[split].add({"image": image, "caption": caption, "key": record.key, "label": label})
        stats.kept[split] += 1
        stats.bytes_out += len(image)
    for writer in writers.values():
        writer.finish(work_dir)
    stats.seconds = time.perf_counter() - start
    result = {"unit": unit.describe(), **stats.to_dict()}
    _write_json(os.path.join(work_dir, f"unit-{unit_id}.json"), result)  # last: marks the unit done
    return result


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=2)
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def merge_split(out_dir: str, split: str, unit_ids: Sequence[int]) -> int:
    """Write `<split>/index.json` from the finished units' indexes, in unit order; returns the sample count."""
    work_dir = os.path.join(out_dir, WORK_DIR)
    chunks: list[dict[str, Any]] = []
    config: dict[str, Any] | None = None
    for unit_id in unit_ids:
        path = os.path.join(work_dir, f"{split}-{unit_id}.index.json")
        if not os.path.exists(path):
            continue  # this unit kept nothing for this split
        part = _read_json(path)
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
    _write_json(index_path, {"chunks": chunks, "config": config, "updated_at": str(time.time())})
    return sum(int(c["chunk_size"]) for c in chunks)


# -------------------------------------------------------------------------------------------- the job
_WORKER: dict[str, Any] = {}


def _worker_init(source: Source, out_dir: str, options: IngestOptions) -> None:
    Image.MAX_IMAGE_PIXELS = None  # ImagePolicy.max_pixels is the limit, checked from the header
    _WORKER.update(source=source, out_dir=out_dir, options=options)


def _worker_run(job: tuple[int, Unit]) -> tuple[int, dict[str, Any]]:
    unit_id, unit = job
    return unit_id, process_unit(_WORKER["source"], unit, unit_id, _WORKER["out_dir"], _WORKER["options"])


@contextlib.contextmanager
def _pil_limit_off() -> Iterator[None]:
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _run_for(source: Source, units: list[Unit], first_id: int) -> dict[str, Any]:
    """One ingestion run in the plan: what was read, and its units under their ids."""
    return {
        "format": source.format,
        "inputs": source.paths,
        "caption_fields": source.caption_fields,
        "label_field": source.label_field,
        "image_field": source.image_field,
        "units": {str(first_id + i): u.describe() for i, u in enumerate(units)},
    }


def plan_units(plan: dict[str, Any]) -> dict[int, Unit]:
    return {int(k): Unit(**v) for run in plan["runs"] for k, v in run["units"].items()}


def plan_inputs(plan: dict[str, Any]) -> list[str]:
    return [p for run in plan["runs"] for p in run["inputs"]]


def _prepare(out_dir: str, source: Source, units: list[Unit], options: IngestOptions, mode: str) -> dict[str, Any]:
    """Create or reopen the output; returns the plan: the shared options and every run (`--append` adds one)."""
    work_dir = os.path.join(out_dir, WORK_DIR)
    plan_path = os.path.join(work_dir, PLAN_FILE)
    has_plan = os.path.exists(plan_path)
    complete = os.path.exists(os.path.join(out_dir, META_FILE))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise GenLIPUserError(f"output {out_dir!r} exists and is not a directory")
    nonempty = os.path.isdir(out_dir) and bool(os.listdir(out_dir))
    if mode == "overwrite" and nonempty:
        if not (has_plan or complete or set(os.listdir(out_dir)) <= {*SPLITS, META_FILE, REPORT_FILE, WORK_DIR}):
            raise GenLIPUserError(
                f"--overwrite: {out_dir!r} holds files genlip optimize did not write; refusing to delete them"
            )
        for name in (*SPLITS, META_FILE, REPORT_FILE, WORK_DIR):
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        nonempty = False
    if not nonempty:
        if mode in ("resume", "append"):
            raise GenLIPUserError(f"--{mode}: {out_dir!r} holds no earlier run")
        os.makedirs(work_dir, exist_ok=True)
        plan = {"options": options.to_dict(), "runs": [_run_for(source, units, 0)]}
        _write_json(plan_path, plan)
        return plan
    if not has_plan:
        raise GenLIPUserError(
            f"output directory {out_dir!r} is not empty and was not written by `genlip optimize --input`: "
            "choose another path or pass --overwrite"
        )
    plan = _read_json(plan_path)
    if plan["options"] != options.to_dict():
        raise GenLIPUserError(
            f"the image/split options differ from those {out_dir!r} was written with ({plan['options']}): "
            "use the same options, or --overwrite"
        )
    last = plan["runs"][-1]
    if mode == "resume":
        if complete:
            raise GenLIPUserError(f"{out_dir!r} is already complete: nothing to resume (use --append to add inputs)")
        first_id = min(int(k) for k in last["units"]) if last["units"] else 0
        if _run_for(source, units, first_id) != last:
            raise GenLIPUserError(
                f"--resume: the inputs or fields differ from the interrupted run in {out_dir!r} "
                f"(it read {last['inputs']} as {last['format']}); rerun that command with --resume, or --overwrite"
            )
        return plan
    if mode == "append":
        if not complete:
            raise GenLIPUserError(f"--append: {out_dir!r} is an unfinished run; finish it with --resume first")
        again = sorted(set(plan_inputs(plan)) & set(source.paths))
        if again:
            raise GenLIPUserError(f"--append: {again} already went into {out_dir!r}")
        first_id = 1 + max(plan_units(plan), default=-1)
        plan["runs"].append(_run_for(source, units, first_id))
        _write_json(plan_path, plan)
        os.remove(os.path.join(out_dir, META_FILE))  # incomplete again until the new units are merged
        return plan
    if complete:
        raise GenLIPUserError(
            f"{out_dir!r} already holds a dataset: pass --append to add these inputs, or --overwrite to replace it"
        )
    raise GenLIPUserError(
        f"{out_dir!r} holds an interrupted run ({len(_done_units(out_dir))} of {len(plan_units(plan))} units "
        "done): pass --resume to finish it, or --overwrite to start over"
    )


def _done_units(out_dir: str) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    for path in glob.glob(os.path.join(out_dir, WORK_DIR, "unit-*.json")):
        unit_id = int(os.path.basename(path)[len("unit-") : -len(".json")])
        done[unit_id] = _read_json(path)
    return done


def optimize_corpus(
    source: Source,
    output_dir: str,
    options: IngestOptions = IngestOptions(),  # noqa: B008 - frozen dataclass
    num_workers: int = 1,
    mode: str = "new",
    progress: bool = False,
) -> dict[str, Any]:
    """Ingest `source` into `output_dir`; `mode` is new | overwrite | resume | append. Returns the report."""
    if mode not in ("new", "overwrite", "resume", "append"):
        raise ValueError(f"unknown mode {mode!r}")
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    units = source.units()  # structural checks happen here, before anything is written
    plan = _prepare(output_dir, source, units, options, mode)
    planned = plan_units(plan)
    done = _done_units(output_dir)
    todo = [(uid, unit) for uid, unit in sorted(planned.items()) if uid not in done]
    start = time.perf_counter()
    fresh: dict[int, dict[str, Any]] = {}
    workers = max(1, min(num_workers, len(todo)))
    last_note = start
    try:
        if workers == 1:
            with _pil_limit_off():
                for uid, unit in todo:
                    fresh[uid] = process_unit(source, unit, uid, output_dir, options)
                    last_note = _note_progress(progress, fresh, len(todo), start, last_note)
        else:
            ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(source, output_dir, options)) as pool:
                for uid, result in pool.imap_unordered(_worker_run, todo):
                    fresh[uid] = result
                    last_note = _note_progress(progress, fresh, len(todo), start, last_note)
    except KeyboardInterrupt:
        raise GenLIPUserError(
            f"interrupted after {len(done) + len(fresh)} of {len(planned)} units; "
            f"finish with the same command plus --resume (output: {output_dir})"
        ) from None
    seconds = time.perf_counter() - start
    done.update(fresh)
    counts = {split: merge_split(output_dir, split, sorted(planned)) for split in SPLITS}
    report = _report(plan, done, fresh, counts, seconds, num_resumed=len(planned) - len(todo))
    _write_json(os.path.join(output_dir, REPORT_FILE), report)
    meta = {
        "source": "+".join(dict.fromkeys(run["format"] for run in plan["runs"])),
        "format_version": 1,
        "fields": FIELDS,
        "num_train": counts["train"],
        "num_val": counts["val"],
        "class_names": plan["options"]["class_names"],
        "inputs": plan_inputs(plan),
        "runs": [{k: v for k, v in run.items() if k != "units"} for run in plan["runs"]],
        "options": plan["options"],
    }
    _write_json(os.path.join(output_dir, META_FILE), meta)  # written last: its presence marks a complete dataset
    return report


def _note_progress(enabled: bool, fresh: dict[int, Any], total: int, start: float, last: float) -> float:
    now = time.perf_counter()
    if not enabled or (now - last < 10.0 and len(fresh) < total):
        return last
    images = sum(sum(r["kept"].values()) + sum(r["skipped"].values()) for r in fresh.values())
    print(f"  {len(fresh)}/{total} units, {images} images, {images / max(now - start, 1e-9):.0f} images/s",
          file=sys.stderr, flush=True)
    return now


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
    for uid in sorted(done):
        skipped.update(done[uid]["skipped"])
        for reason, keys in done[uid]["examples"].items():
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
    return (
        f"kept {report['kept_total']} ({kept['train']} train, {kept['val']} val), skipped {report['skipped_total']}"
        f"{f' ({skipped})' if skipped else ''} from {report['units']} {report['format']} units in "
        f"{report['seconds']:.1f} s ({report['images_per_s'] or 0:.0f} images/s) -> {output_dir} "
        f"(report: {REPORT_FILE})"
    )
