"""Caption correctness on held-out synthetic scenes: is every object named with its colour and shape?

    results = evaluate_scene_captions(module, Preprocessing(64).transform(), SceneConfig(), num_objects=2)

Fresh scenes come from a seed stream the training and validation data never used; they are captioned greedily
and every object is checked: an object counts as named when the caption mentions its colour directly followed
by its shape ("... red circle ..."), each mention matching at most one object. `genlip caption-eval` runs it.

Beside the model, the same scenes are scored for a constant caption: the most frequent of the training stream's
first captions (`constant_caption`), given for every scene, the floor a captioner must beat (the caption
evaluation's `captions/cider_constant` is the same baseline in CIDEr-D).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from genlip_lit.data.synthetic import Scene, SceneConfig, generate_scene, named_objects
from genlip_lit.data.transforms import FixedResTransform
from genlip_lit.eval.evaluations import CONSTANT_CAPTION_READS

# Far from the training (seed) and validation (seed + 1_000_003) streams of any small seed.
HELD_OUT_SEED = 2_000_000_011


def score_caption(caption: str, scene: Scene) -> tuple[int, int]:
    """(objects named with the right colour and shape, objects in the scene)."""
    mentions = Counter(named_objects(caption))
    hits = 0
    for obj in scene.objects:
        key = (obj.color, obj.shape)
        if mentions[key] > 0:
            mentions[key] -= 1
            hits += 1
    return hits, len(scene.objects)


def constant_caption(scene_config: SceneConfig, train_seed: int = 0, reads: int = CONSTANT_CAPTION_READS) -> str:
    """The most frequent caption (the first seen on a tie) of the training stream's first `reads` scenes: what
    the data itself generates for `seed`, `index` 0, 1, ... (data/shards.py), so no shards need to be at hand."""
    captions = [generate_scene(train_seed, i, scene_config).caption for i in range(reads)]
    return Counter(captions).most_common(1)[0][0]


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
    constant: str | None = None,
) -> dict[str, Any]:
    """Caption `num_scenes` held-out scenes with exactly `num_objects` objects; return accuracy figures, and
    `constant`'s (a caption given for every scene, scored the same way) when one is given."""
    config = SceneConfig(**{**scene_config.__dict__, "min_objects": num_objects, "max_objects": num_objects})
    hits = total = exact_scenes = 0
    floor_hits = floor_scenes = 0
    shown: list[dict[str, str]] = []
    for start in range(0, num_scenes, batch_size):
        scenes = [generate_scene(seed + num_objects, i, config) for i in range(start, min(start + batch_size, num_scenes))]
        pixels = torch.stack([transform(s.image) for s in scenes]).to(module.device)
        for scene, caption in zip(scenes, module.generate_captions(pixels)):
            h, n = score_caption(caption, scene)
            hits, total, exact_scenes = hits + h, total + n, exact_scenes + (h == n)
            if constant is not None:
                h, n = score_caption(constant, scene)
                floor_hits, floor_scenes = floor_hits + h, floor_scenes + (h == n)
            if len(shown) < examples:
                shown.append({"reference": scene.caption, "generated": caption})
    result = {
        "objects_per_scene": num_objects,
        "scenes": num_scenes,
        "object_accuracy": hits / max(total, 1),
        "scene_accuracy": exact_scenes / max(num_scenes, 1),
        "examples": shown,
    }
    if constant is not None:
        result.update(constant_caption=constant, constant_object_accuracy=floor_hits / max(total, 1),
                      constant_scene_accuracy=floor_scenes / max(num_scenes, 1))
    return result


def train_seed_of(data_hparams: dict[str, Any]) -> int:
    """The synthetic training stream's seed of a checkpoint's data (the data module's default, 0, without one)."""
    return int((data_hparams.get("synthetic") or {}).get("seed", 0))


def scene_config_of(data_hparams: dict[str, Any]) -> SceneConfig:
    """The scene settings a checkpoint's synthetic data used (defaults where it had none)."""
    synthetic = data_hparams.get("synthetic") or {}
    fields = SceneConfig.__dataclass_fields__
    return SceneConfig(**{k: v for k, v in synthetic.items() if k in fields})
