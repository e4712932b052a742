"""Caption scoring against scenes: every object must be named with its colour directly before its shape."""

from genlip_lit.data.synthetic import SceneConfig, generate_scene, named_objects
from genlip_lit.studies.scene_captions import score_caption


def test_reference_caption_scores_perfectly():
    for i in range(30):
        scene = generate_scene(5, i, SceneConfig(word_prob=0.5))
        hits, total = score_caption(scene.caption, scene)
        assert hits == total == len(scene.objects)


def test_wrong_shape_or_colour_is_a_miss_and_mentions_are_used_once():
    scene = generate_scene(5, 0, SceneConfig(min_objects=1, max_objects=1))
    obj = scene.objects[0]
    other_shape = "circle" if obj.shape != "circle" else "square"
    other_color = "red" if obj.color != "red" else "blue"
    assert score_caption(f"a large {obj.color} {other_shape} in the center.", scene) == (0, 1)
    assert score_caption(f"a large {other_color} {obj.shape} in the center.", scene) == (0, 1)
    assert score_caption(f"a small {obj.color} {obj.shape} at the top.", scene) == (1, 1)
    assert named_objects("a red circle, a blue star and a red circle.") == [
        ("red", "circle"),
        ("blue", "star"),
        ("red", "circle"),
    ]


def test_the_constant_caption_baseline_is_the_most_frequent_training_caption_scored_the_same_way():
    from collections import Counter

    import torch

    from genlip_lit.data.transforms import FixedResTransform
    from genlip_lit.studies.scene_captions import constant_caption, evaluate_scene_captions

    config = SceneConfig(image_size=32, patch_size=8)
    captions = [generate_scene(7, i, config).caption for i in range(60)]  # the training stream of seed 7
    constant = constant_caption(config, train_seed=7, reads=60)
    assert captions.count(constant) == max(Counter(captions).values()) > 1

    class Constant:  # a "captioner" that answers the baseline for every image: it must score as the baseline
        device = torch.device("cpu")

        def generate_captions(self, pixels):
            return [constant] * len(pixels)

    res = evaluate_scene_captions(Constant(), FixedResTransform(32), config, num_objects=1, num_scenes=40,
                                  seed=11, batch_size=16, constant=constant)
    scenes = [generate_scene(11 + 1, i, SceneConfig(image_size=32, patch_size=8, min_objects=1, max_objects=1))
              for i in range(40)]
    expected = sum(score_caption(constant, s)[0] for s in scenes) / 40  # one object per scene
    assert res["constant_caption"] == constant
    assert res["constant_object_accuracy"] == res["object_accuracy"] == res["constant_scene_accuracy"] == expected
    assert "constant_caption" not in evaluate_scene_captions(Constant(), FixedResTransform(32), config, 1, 4, seed=11)
