"""Caption correctness on held-out synthetic scenes: is every object named with its colour and shape?

    results = evaluate_scene_captions(module, Preprocessing(64).transform(), SceneConfig(), num_objects=2)

Fresh scenes come from a seed stream the training and validation data never used; they are captioned greedily
and every object is checked: an object counts as named when the caption mentions its colour directly followed
by its shape ("... red circle ..."), each mention matching at most one object. `genlip caption-eval` runs it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from genlip_lit.data.synthetic import Scene, SceneConfig, generate_scene, named_objects
from genlip_lit.data.transforms import FixedResTransform

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


def scene_config_of(data_hparams: dict[str, Any]) -> SceneConfig:
    """The scene settings a checkpoint's synthetic data used (defaults where it had none)."""
    synthetic = data_hparams.get("synthetic") or {}
    fields = SceneConfig.__dataclass_fields__
    return SceneConfig(**{k: v for k, v in synthetic.items() if k in fields})
