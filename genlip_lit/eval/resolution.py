"""`genlip eval-res`: evaluate checkpoints at several input resolutions and at native aspect ratio (paper Fig. 5).

    genlip eval-res --ckpt runs/stage1/version_0/checkpoints/last.ckpt --ckpt runs/stage2 \
        --name stage1 --name stage2 --resolutions 64 96 128 native --output runs/eval_res

Held-out synthetic scenes (by default the stage-2 kind: 96-160 px sides at free aspect ratios, a word in 10 px
type in every scene) are fed to every checkpoint at each resolution: an integer R squashes the whole scene to
R x R (R rounded to the patch size, nothing cropped), "native" keeps the scene's aspect ratio through
`NativeResTransform` (sizes within --min-patches/--max-patches are left as they are). Per checkpoint and
resolution: greedy captions scored with CIDEr-D and BLEU-4 against the true caption; the OCR exact match (the word
the caption says is written vs. the drawn word); a linear probe of the scene class on mean-pooled features (and,
with --attentive-epochs, an attentive probe at the square sizes), fitted on --probe-train scenes of another
held-out stream at the same resolution; the patch readout where the label maps still match the patch grid
(native inputs that were not resized). Writes DIR/table.md, table.csv, result.json and resolution.png (metrics
against the input side; native inputs sit at the side of a square of their mean pixel count). Seed streams: see
`resolution_io.EVAL_SEED`. On a CPU shared with other jobs, `--threads 1` avoids OpenMP spin-waiting (measured
here: 25-40x faster than 2 threads on a 2-core machine under load).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from genlip_lit.data.batch import normalize_pixels
from genlip_lit.data.synthetic import Scene, SceneConfig, caption_vocabulary, class_names
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.resolution_io import (
    EVAL_SEED,
    METRICS,
    PROBE_SEED_OFFSET,
    PreparedScenes,
    Resolution,
    check_resolution,
    make_scenes,
    ocr_exact_match,
    parse_resolutions,
    prepare,
    transform_for,
    write_outputs,
)

_GENERIC_DIRS = re.compile(r"^(checkpoints|tb|lightning_logs|version_\d+)$")


# ---------------------------------------------------------------------------------------------- one cell
def _patch_size(module: Any) -> int | None:
    return getattr(getattr(module, "config", None), "patch_size", None)


def evaluate_cell(
    module: Any,
    norm: Callable[[torch.Tensor], torch.Tensor],
    res: Resolution,
    scenes: list[Scene],
    evals: PreparedScenes,
    probes: PreparedScenes,
    opts: argparse.Namespace,
) -> dict[str, Any]:
    """All metrics of one checkpoint at one resolution (NaN where one does not apply, with a note why).

    `evals` are `scenes` at this resolution, `probes` the probe's training scenes; `norm` normalizes uint8
    pixels the checkpoint's way and moves them to its device.
    """
    from genlip_lit.eval.caption_metrics import caption_scores
    from genlip_lit.eval.probes import extract_features, linear_probe, run_probes
    from genlip_lit.eval.readout import readout

    device = module.device
    start = time.perf_counter()
    out: dict[str, Any] = {key: float("nan") for _, key, _ in METRICS}
    notes: list[str] = []

    # 1-2. captions and the word they say is written
    if module.is_generative:
        generated: list[str] = [""] * len(scenes)
        for idx, x in evals.batches(opts.batch_size):
            for i, caption in zip(idx, module.generate_captions(norm(x), opts.max_new_tokens)):
                generated[i] = caption
        scores = caption_scores(generated, [[s.caption] for s in scenes])
        out["cider"], out["bleu4"] = scores["cider"], scores["bleu4"]
        out["ocr_em"], out["ocr_scenes"] = ocr_exact_match(generated, [s.word for s in scenes])
        if out["ocr_scenes"] == 0:
            notes.append("no evaluation scene has a word: OCR exact match n/a")
        out["examples"] = [{"reference": s.caption, "generated": g}
                           for s, g in zip(scenes, generated[: opts.examples])]
    else:
        notes.append(f"{type(module).__name__} does not generate captions: caption and OCR columns n/a")

    # 3. probes of the scene class on frozen features
    def pairs(prepared: PreparedScenes) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((norm(x), prepared.labels[idx]) for idx, x in prepared.batches(opts.batch_size))

    num_classes = len(class_names())
    if opts.attentive_epochs > 0 and probes.uniform and evals.uniform:
        results = run_probes(module, pairs(probes), pairs(evals), num_classes, device=device,
                             attentive_kwargs={"epochs": opts.attentive_epochs})
    else:
        tr_x, tr_y = extract_features(module, pairs(probes), device, pooled=True)
        te_x, te_y = extract_features(module, pairs(evals), device, pooled=True)
        results = {"linear": linear_probe(tr_x, tr_y, te_x, te_y, num_classes, device=device)}
        if opts.attentive_epochs > 0:
            notes.append("attentive probe n/a: inputs of different sizes give patch sequences of unequal length")
    out["linear_top1"] = results["linear"].top1
    if "attentive" in results:
        out["attentive_top1"] = results["attentive"].top1
    out["probe_chance"] = results["linear"].chance
    out["probes"] = {name: r.to_dict() for name, r in results.items()}

    # 4. patch readout where the label maps still describe the patch grid
    kept = [i for i, k in enumerate(evals.kept_size) if k]
    model_patch, scene_patch = _patch_size(module), opts.patch_size
    if res.side is not None:
        notes.append("readout n/a: squashed inputs no longer match the per-patch label maps")
    elif model_patch != scene_patch:
        notes.append(f"readout n/a: the model's patch size {model_patch} is not the label maps' {scene_patch}")
    elif not kept:
        notes.append("readout n/a: every native input was resized (see --min-patches/--max-patches)")
    else:
        words = caption_vocabulary()
        try:
            scored = [(idx, module.patch_word_scores(norm(x), words).float().cpu())
                      for idx, x in evals.batches(opts.batch_size, only=kept)]
        except NotImplementedError as err:
            notes.append(f"readout n/a: {err}")
        else:
            # every object patch of every image as one row: sizes differ, readout() only needs matching order
            flat = torch.cat([s.reshape(-1, s.shape[-1]) for _, s in scored])[None]
            order = [i for idx, _ in scored for i in idx]
            shape = torch.cat([torch.from_numpy(scenes[i].patch_shape).reshape(-1) for i in order])
            color = torch.cat([torch.from_numpy(scenes[i].patch_color).reshape(-1) for i in order])
            r = readout(flat, words, shape[None, None], color[None, None], k=opts.readout_k)
            out.update(readout=r.accuracy, readout_chance_permuted=r.chance_permuted,
                       readout_chance_uniform=r.chance_uniform, readout_patches=r.num_patches)
            if len(kept) < len(scenes):
                notes.append(f"readout on the {len(kept)} of {len(scenes)} scenes not resized")
    out["notes"] = notes
    out["seconds"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------------------------------- command
def default_name(path: str) -> str:
    """The run directory of a checkpoint: runs/compare/genlip/tb/checkpoints/last.ckpt -> genlip."""
    for part in reversed(Path(os.path.abspath(path)).parent.parts):
        if part and part != os.sep and not _GENERIC_DIRS.match(part):
            return part
    return Path(path).stem


def _names(paths: list[str], given: list[str] | None) -> list[str]:
    if given and len(given) != len(paths):
        raise GenLIPUserError(f"{len(given)} --name for {len(paths)} --ckpt: give one name per checkpoint or none")
    names = list(given) if given else [default_name(p) for p in paths]
    if given and len(set(names)) != len(names):
        raise GenLIPUserError(f"--name values must differ, got {names}")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # default names can collide (two runs named alike): number them
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}-{seen[name]}"
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genlip eval-res",
        description="Evaluate checkpoints at several resolutions and at native aspect ratio on held-out scenes.",
    )
    p.add_argument("--ckpt", action="append", required=True, help="a checkpoint or run directory (repeatable)")
    p.add_argument("--name", action="append", default=None, help="table name per --ckpt (default: run directory)")
    p.add_argument("--resolutions", nargs="+", default=["64", "96", "128", "native"],
                   help="squash sides in pixels (rounded to the patch size) and/or 'native' (64 96 128 native)")
    p.add_argument("--output", required=True, help="for table.md, table.csv, result.json, resolution.png")
    p.add_argument("--num-scenes", type=int, default=200, help="evaluation scenes (200)")
    p.add_argument("--probe-train", type=int, default=1000, help="scenes the probes are fitted on (1000)")
    p.add_argument("--seed", type=int, default=EVAL_SEED,
                   help=f"evaluation scene stream ({EVAL_SEED}); probe scenes use seed + {PROBE_SEED_OFFSET}")
    p.add_argument("--image-size", type=int, default=96, help="smallest scene side (96)")
    p.add_argument("--max-image-size", type=int, default=160, help="largest scene side (160); 0 = square scenes")
    p.add_argument("--word-font-px", type=int, default=10, help="pixel size of the rendered word (10)")
    p.add_argument("--word-prob", type=float, default=1.0, help="share of scenes with a word (1.0)")
    p.add_argument("--patch-size", type=int, default=None, help="scene label-map patch (default: the models')")
    p.add_argument("--min-patches", type=int, default=16, help="native: fewest patches per image (16)")
    p.add_argument("--max-patches", type=int, default=1024, help="native: most patches per image (1024)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="caption length limit (default: the model's)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--attentive-epochs", type=int, default=0,
                   help="also run the attentive probe for this many epochs at square resolutions (paper-style: "
                   "20; costs about as much as the rest of a cell on CPU); 0 = linear probe only (default)")
    p.add_argument("--readout-k", type=int, default=5, help="patch readout: top-k words per patch (5)")
    p.add_argument("--examples", type=int, default=3, help="captions kept in result.json per cell (3)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: torch's choice); 1 is far faster on a busy shared machine")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (("--num-scenes", args.num_scenes, 1), ("--probe-train", args.probe_train, 2),
                             ("--batch-size", args.batch_size, 1), ("--readout-k", args.readout_k, 1),
                             ("--min-patches", args.min_patches, 1), ("--examples", args.examples, 0)):
        if value < low:
            raise GenLIPUserError(f"{flag} must be at least {low}, got {value}")
    if args.max_patches < args.min_patches:
        raise GenLIPUserError(f"--max-patches ({args.max_patches}) is below --min-patches ({args.min_patches})")
    if args.threads < 0:
        raise GenLIPUserError(f"--threads must be >= 0 (0 = torch's choice), got {args.threads}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise GenLIPUserError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")


def resolution_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    for value in args.resolutions:  # syntax first: fail before loading anything
        check_resolution(value)
    from genlip_lit.eval.report import torch_threads

    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from genlip_lit.eval.report import resolve_device
    from genlip_lit.modules.loading import load_checkpoint, resolve_checkpoint

    paths = [resolve_checkpoint(p) for p in args.ckpt]
    names = _names(paths, args.name)
    loaded = [load_checkpoint(p, resolve_device(args.device)) for p in paths]
    patches = {_patch_size(m) for m, _ in loaded} - {None}
    if len(patches) > 1:
        raise GenLIPUserError(f"the checkpoints use different patch sizes {sorted(patches)}: evaluate them apart")
    args.patch_size = args.patch_size or (min(patches) if patches else 8)  # the scenes' label-map patch
    model_patch = min(patches) if patches else args.patch_size
    resolutions, notes = parse_resolutions(args.resolutions, model_patch)
    try:
        config = SceneConfig(image_size=args.image_size, max_image_size=args.max_image_size or None,
                             patch_size=args.patch_size, word_font_px=args.word_font_px, word_prob=args.word_prob)
    except ValueError as err:
        raise GenLIPUserError(f"scene options: {err}") from None
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    probe_seed = args.seed + PROBE_SEED_OFFSET
    t0 = time.perf_counter()
    scenes = make_scenes(args.seed, args.num_scenes, config)
    probe_scenes = make_scenes(probe_seed, args.probe_train, config)
    print(f"generated {len(scenes)} + {len(probe_scenes)} scenes in {time.perf_counter() - t0:.1f} s")

    rows: list[dict[str, Any]] = []
    for res in resolutions:  # outer loop: each resolution's pixels are prepared once for all checkpoints
        transform = transform_for(res, model_patch, args.min_patches, args.max_patches)
        evals, probes = prepare(scenes, transform), prepare(probe_scenes, transform)
        for name, path, (module, data) in zip(names, paths, loaded):
            mean, std = tuple(data.get("mean", (0.5,) * 3)), tuple(data.get("std", (0.5,) * 3))

            def norm(x: torch.Tensor, module: Any = module, mean: tuple = mean, std: tuple = std) -> torch.Tensor:
                return normalize_pixels(x.to(module.device), mean, std)

            with torch.no_grad():
                metrics = evaluate_cell(module, norm, res, scenes, evals, probes, args)
            rows.append({"name": name, "checkpoint": path, "objective": getattr(module, "objective_name", ""),
                         "resolution": res.label, "side": res.side or evals.mean_side(), "input": evals.size_text(),
                         "patches": evals.mean_patches(model_patch), "metrics": metrics})
            print(f"{name} @ {res.label}: {metrics['seconds']:.1f} s")
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: order[r["name"]])  # stable: resolutions stay in the given order
    meta = {"seed": args.seed, "probe_seed": probe_seed, "num_scenes": args.num_scenes,
            "probe_train": args.probe_train, "scene_config": config.__dict__,
            "resolutions": [r.label for r in resolutions], "min_patches": args.min_patches,
            "max_patches": args.max_patches, "attentive_epochs": args.attentive_epochs,
            "max_new_tokens": args.max_new_tokens, "notes": notes,
            "scenes_with_word": sum(s.word is not None for s in scenes), "seconds": time.perf_counter() - t0}
    table = write_outputs(rows, meta, output)
    print(table)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {output / 'table.md'}, table.csv, result.json and resolution.png ({meta['seconds']:.0f} s)")
    return 0
