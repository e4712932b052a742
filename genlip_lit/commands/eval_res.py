"""`genlip eval-res`: evaluate checkpoints at several input resolutions and at native aspect ratio (paper Fig. 5).

    genlip eval-res --ckpt runs/stage1/version_0/checkpoints/last.ckpt --ckpt runs/stage2 \\
        --name stage1 --name stage2 --resolutions 64 96 128 native --output runs/eval_res

Held-out synthetic scenes (by default the stage-2 kind: 96-160 px sides at free aspect ratios, a word in 10 px
type in every scene) are fed to every checkpoint at each resolution: an integer R squashes the whole scene to
R x R (R rounded to the patch size, nothing cropped), "native" keeps the scene's aspect ratio through
`NativeResTransform` (sizes within --min-patches/--max-patches are left as they are). The metrics of one cell are
`studies/resolution.py`'s. Writes DIR/table.md, table.csv, result.json and resolution.png (metrics against the input
side; native inputs sit at the side of a square of their mean pixel count). Seed streams: see
`resolution_io.EVAL_SEED`. On a CPU shared with other jobs, `--threads 1` avoids OpenMP spin-waiting (measured
here: 25-40x faster than 2 threads on a 2-core machine under load).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from genlip_lit.commands.common import (
    add_ckpt,
    add_device,
    add_output,
    add_threads,
    at_least,
    command_parser,
    parse,
)
from genlip_lit.errors import GenLIPUserError

_GENERIC_DIRS = re.compile(r"^(checkpoints|tb|lightning_logs|version_\d+)$")


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


def build_parser() -> Any:
    from genlip_lit.studies.resolution_io import EVAL_SEED, PROBE_SEED_OFFSET

    p = command_parser("eval-res", "Evaluate checkpoints at several resolutions and at native aspect ratio on "
                       "held-out scenes.")
    add_ckpt(p, many=True)
    p.add_argument("--name", nargs="+", type=str, default=None, help="table name per --ckpt (null: the run "
                   "directory)")
    p.add_argument("--resolutions", nargs="+", type=str, default=["64", "96", "128", "native"],
                   help="squash sides in pixels (rounded to the patch size) and/or 'native'")
    add_output(p, help="for table.md, table.csv, result.json, resolution.png")
    p.add_argument("--num-scenes", type=int, default=200, help="evaluation scenes")
    p.add_argument("--probe-train", type=int, default=1000, help="scenes the probes are fitted on")
    p.add_argument("--seed", type=int, default=EVAL_SEED,
                   help=f"evaluation scene stream; probe scenes use seed + {PROBE_SEED_OFFSET}")
    p.add_argument("--image-size", type=int, default=96, help="smallest scene side")
    p.add_argument("--max-image-size", type=int, default=160, help="largest scene side; 0 = square scenes")
    p.add_argument("--word-font-px", type=int, default=10, help="pixel size of the rendered word")
    p.add_argument("--word-prob", type=float, default=1.0, help="share of scenes with a word")
    p.add_argument("--patch-size", type=int | None, default=None, help="scene label-map patch (null: the "
                   "models')")
    p.add_argument("--min-patches", type=int, default=16, help="native: fewest patches per image")
    p.add_argument("--max-patches", type=int, default=1024, help="native: most patches per image")
    p.add_argument("--max-new-tokens", type=int | None, default=None, help="caption length limit (null: the "
                   "model's)")
    p.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    p.add_argument("--attentive-epochs", type=int, default=0,
                   help="also run the attentive probe for this many epochs at square resolutions (paper-style: "
                   "20; costs about as much as the rest of a cell on CPU); 0 = linear probe only")
    p.add_argument("--readout-k", type=int, default=5, help="patch readout: top-k words per patch")
    p.add_argument("--examples", type=int, default=3, help="captions kept in result.json per cell")
    add_device(p)
    add_threads(p)
    return p


def _check_args(args: Any) -> None:
    for flag, value, low in (("--num-scenes", args.num_scenes, 1), ("--probe-train", args.probe_train, 2),
                             ("--batch-size", args.batch_size, 1), ("--readout-k", args.readout_k, 1),
                             ("--min-patches", args.min_patches, 1), ("--examples", args.examples, 0),
                             ("--threads", args.threads, 0), ("--max-new-tokens", args.max_new_tokens, 1)):
        at_least(flag, value, low)
    if args.max_patches < args.min_patches:
        raise GenLIPUserError(f"--max-patches ({args.max_patches}) is below --min-patches ({args.min_patches})")


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv, repeatable=("--ckpt", "--name", "--resolutions"))
    _check_args(args)
    from genlip_lit.studies.resolution_io import check_resolution

    for value in args.resolutions:  # syntax first: fail before loading anything
        check_resolution(value)
    from genlip_lit.commands.common import torch_threads

    with torch_threads(args.threads):
        return _run(args)


def _run(args: Any) -> int:
    import torch

    from genlip_lit.commands.common import load_module, resolve_ckpt
    from genlip_lit.commands.output import check_output, claim_output
    from genlip_lit.data.synthetic import SceneConfig
    from genlip_lit.studies.resolution import CellOptions, evaluate_cell, model_patch_size
    from genlip_lit.studies.resolution_io import (
        PROBE_SEED_OFFSET,
        make_scenes,
        parse_resolutions,
        prepare,
        transform_for,
        write_outputs,
    )

    check_output(args.output, "eval-res", args.overwrite)  # before the checkpoints load
    paths = [resolve_ckpt(p) for p in args.ckpt]
    names = _names(paths, args.name)
    loaded = [load_module(p, args.device) for p in paths]
    patches = {model_patch_size(m) for m, _, _ in loaded} - {None}
    if len(patches) > 1:
        raise GenLIPUserError(f"the checkpoints use different patch sizes {sorted(patches)}: evaluate them apart")
    scene_patch = args.patch_size or (min(patches) if patches else 8)  # the scenes' label-map patch
    model_patch = min(patches) if patches else scene_patch
    resolutions, notes = parse_resolutions(args.resolutions, model_patch)
    try:
        config = SceneConfig(image_size=args.image_size, max_image_size=args.max_image_size or None,
                             patch_size=scene_patch, word_font_px=args.word_font_px, word_prob=args.word_prob)
    except ValueError as err:
        raise GenLIPUserError(f"scene options: {err}") from None
    opts = CellOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, examples=args.examples,
                       attentive_epochs=args.attentive_epochs, readout_k=args.readout_k, patch_size=scene_patch)
    output = Path(claim_output(args.output, "eval-res", args.overwrite))
    probe_seed = args.seed + PROBE_SEED_OFFSET
    t0 = time.perf_counter()
    scenes = make_scenes(args.seed, args.num_scenes, config)
    probe_scenes = make_scenes(probe_seed, args.probe_train, config)
    print(f"generated {len(scenes)} + {len(probe_scenes)} scenes in {time.perf_counter() - t0:.1f} s")

    rows: list[dict[str, Any]] = []
    for res in resolutions:  # outer loop: each resolution's pixels are prepared once for all checkpoints
        transform = transform_for(res, model_patch, args.min_patches, args.max_patches)
        evals, probes = prepare(scenes, transform), prepare(probe_scenes, transform)
        for name, path, (module, preprocessing, _) in zip(names, paths, loaded):

            def norm(x: torch.Tensor, module: Any = module, preprocessing: Any = preprocessing) -> torch.Tensor:
                return preprocessing.normalize(x.to(module.device))

            with torch.no_grad():
                metrics = evaluate_cell(module, norm, res, scenes, evals, probes, opts)
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
