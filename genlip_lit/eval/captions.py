"""Caption images with a checkpoint, and measure caption correctness on held-out synthetic scenes.

    genlip caption --ckpt runs/quickstart/version_0/checkpoints/last.ckpt a.png b.jpg
    genlip caption-eval --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --objects 1 2 3

`caption-eval` generates fresh scenes from a seed stream the training and validation data never used, captions
them greedily and checks every object: an object counts as named when the caption mentions its colour
directly followed by its shape ("... red circle ..."), each mention matching at most one object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from genlip_lit.data.synthetic import COLORS, SHAPES, Scene, SceneConfig, generate_scene
from genlip_lit.data.transforms import FixedResTransform, decode_image
from genlip_lit.errors import GenLIPUserError
from genlip_lit.modules.loading import load_checkpoint

# Far from the training (seed) and validation (seed + 1_000_003) streams of any small seed.
HELD_OUT_SEED = 2_000_000_011
_MENTION = re.compile(rf"\b({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\b")


def mentioned_objects(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs named in a caption, in order."""
    return _MENTION.findall(caption.lower())


def score_caption(caption: str, scene: Scene) -> tuple[int, int]:
    """(objects named with the right colour and shape, objects in the scene)."""
    mentions = Counter(mentioned_objects(caption))
    hits = 0
    for obj in scene.objects:
        key = (obj.color, obj.shape)
        if mentions[key] > 0:
            mentions[key] -= 1
            hits += 1
    return hits, len(scene.objects)


@torch.no_grad()
def evaluate_scene_captions(
    module: Any,
    transform: FixedResTransform,
    scene_config: SceneConfig,
    num_objects: int,
    num_scenes: int = 200,
    seed: int = HELD_OUT_SEED,
    batch_size: int = 50,
    examples: int = 3,
) -> dict[str, Any]:
    """Caption `num_scenes` held-out scenes with exactly `num_objects` objects; return accuracy figures."""
    config = SceneConfig(**{**scene_config.__dict__, "min_objects": num_objects, "max_objects": num_objects})
    hits = total = exact_scenes = 0
    shown: list[dict[str, str]] = []
    for start in range(0, num_scenes, batch_size):
        scenes = [generate_scene(seed + num_objects, i, config) for i in range(start, min(start + batch_size, num_scenes))]
        pixels = torch.stack([transform(s.image) for s in scenes]).to(module.device)
        for scene, caption in zip(scenes, module.generate_captions(pixels)):
            h, n = score_caption(caption, scene)
            hits, total, exact_scenes = hits + h, total + n, exact_scenes + (h == n)
            if len(shown) < examples:
                shown.append({"reference": scene.caption, "generated": caption})
    return {
        "objects_per_scene": num_objects,
        "scenes": num_scenes,
        "object_accuracy": hits / max(total, 1),
        "scene_accuracy": exact_scenes / max(num_scenes, 1),
        "examples": shown,
    }


def _load(ckpt: str, device: str) -> tuple[Any, FixedResTransform, dict[str, Any]]:
    module, data_hparams = load_checkpoint(ckpt, device)
    if not getattr(module, "is_generative", False):
        raise GenLIPUserError(f"checkpoint {ckpt} holds a {type(module).__name__}, which does not generate captions")
    transform = FixedResTransform(
        image_size=int(data_hparams.get("image_size", 224)),
        mean=tuple(data_hparams.get("mean", (0.5, 0.5, 0.5))),
        std=tuple(data_hparams.get("std", (0.5, 0.5, 0.5))),
        train=False,
    )
    return module, transform, data_hparams


def caption_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlip caption", description="Print one caption per image.")
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by `genlip fit`")
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's setting")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the paper's setting)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when temperature > 0")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    # Read every image before loading the model, so a bad path fails fast.
    pictures = []
    for path in args.images:
        try:
            pictures.append(decode_image(Path(path).read_bytes()))
        except FileNotFoundError:
            raise GenLIPUserError(f"image file not found: {path}") from None
        except (OSError, ValueError) as err:
            raise GenLIPUserError(f"{path} is not a readable image ({err})") from None
    module, transform, _ = _load(args.ckpt, args.device)
    pixels = torch.stack([transform(p) for p in pictures]).to(module.device)
    captions = module.generate_captions(pixels, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}")
    return 0


def caption_eval_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="genlip caption-eval",
        description="Caption held-out synthetic scenes and report how many objects are named correctly.",
    )
    parser.add_argument("--ckpt", required=True, help="a checkpoint trained on the synthetic data")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2, 3], help="objects per scene to test")
    parser.add_argument("--num-scenes", type=int, default=200, help="scenes per object count")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out scene stream")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    module, transform, data_hparams = _load(args.ckpt, args.device)
    synthetic = data_hparams.get("synthetic") or {}
    fields = SceneConfig.__dataclass_fields__
    scene_config = SceneConfig(**{k: v for k, v in synthetic.items() if k in fields})
    results = []
    for n in args.objects:
        res = evaluate_scene_captions(module, transform, scene_config, n, args.num_scenes, args.seed)
        results.append(res)
        print(
            f"{n} object(s): {res['object_accuracy']:.1%} of objects named with the right colour and shape, "
            f"{res['scene_accuracy']:.1%} of scenes fully right ({res['scenes']} scenes)"
        )
        for ex in res["examples"]:
            print(f"    ref: {ex['reference']}\n    gen: {ex['generated']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(caption_eval_main())
