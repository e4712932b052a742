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
