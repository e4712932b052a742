"""`genlip caption-eval`: caption held-out synthetic scenes and count the objects named right.

    genlip caption-eval --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --objects 1 2 3
    genlip caption-eval --ckpt runs/quickstart --objects 1 --output runs/caption_eval   # + caption_eval.json

An object counts as named when the caption says its colour directly followed by its shape (`studies/scene_captions.py`).
Each line carries the floor a captioner must beat: the most frequent training caption, given for every scene and
scored the same way (`--no_baseline` skips it).
"""

from __future__ import annotations

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


def build_parser() -> Any:
    from jsonargparse import ActionYesNo

    from genlip_lit.studies.scene_captions import HELD_OUT_SEED

    p = command_parser("caption-eval", "Caption held-out synthetic scenes and report how many objects are named "
                       "correctly.")
    add_ckpt(p, help="a checkpoint trained on the synthetic data, or its run directory (newest last.ckpt)")
    p.add_argument("--objects", nargs="+", type=int, default=[1, 2, 3], help="objects per scene to test")
    p.add_argument("--num-scenes", type=int, default=200, help="scenes per object count")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out scene stream")
    p.add_argument("--baseline", action=ActionYesNo, default=True, help="also score the most frequent training "
                   "caption, given for every scene (--no_baseline: the model alone)")
    add_device(p)
    add_threads(p)
    add_output(p, required=False, help="also write DIR/caption_eval.json (null: print only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv, repeatable=("--objects",))
    at_least("--num-scenes", args.num_scenes, 1)
    for n in args.objects:
        at_least("--objects", n, 1)
    import os

    from genlip_lit.commands.common import load_module, torch_threads
    from genlip_lit.commands.output import check_output, claim_output
    from genlip_lit.errors import GenLIPUserError
    from genlip_lit.eval.evaluations import CONSTANT_CAPTION_READS
    from genlip_lit.storage.paths import write_json
    from genlip_lit.studies.scene_captions import (
        constant_caption,
        evaluate_scene_captions,
        scene_config_of,
        train_seed_of,
    )

    if args.output:
        check_output(args.output, "caption-eval", args.overwrite)
    with torch_threads(args.threads):
        module, preprocessing, data_hparams = load_module(args.ckpt, args.device)
        if not module.is_generative:
            raise GenLIPUserError(f"checkpoint {args.ckpt} holds a {type(module).__name__}, which does not "
                                  "generate captions")
        scene_config = scene_config_of(data_hparams)
        constant = constant_caption(scene_config, train_seed_of(data_hparams)) if args.baseline else None
        if constant is not None:
            print(f"constant-caption baseline: {constant!r} for every scene (the most frequent of the first "
                  f"{CONSTANT_CAPTION_READS:,} training captions)")
        results = []
        for n in args.objects:
            res = evaluate_scene_captions(module, preprocessing.transform(), scene_config, n, args.num_scenes,
                                          args.seed, constant=constant)
            results.append(res)
            floor = ("" if constant is None else f"; constant caption: {res['constant_object_accuracy']:.1%} / "
                     f"{res['constant_scene_accuracy']:.1%}")
            print(f"{n} object(s): {res['object_accuracy']:.1%} of objects named with the right colour and shape, "
                  f"{res['scene_accuracy']:.1%} of scenes fully right ({res['scenes']} scenes){floor}")
            for ex in res["examples"]:
                print(f"    ref: {ex['reference']}\n    gen: {ex['generated']}")
    if args.output:
        claim_output(args.output, "caption-eval", args.overwrite)
        write_json(os.path.join(args.output, "caption_eval.json"), results)
        print(f"wrote {os.path.join(args.output, 'caption_eval.json')}")
    return 0
