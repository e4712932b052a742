"""The rich embedded world (data/world.py): deterministic per seed, captions that say exactly what is drawn, label
maps that agree with the caption, and its selection from `data.synthetic.world`."""

from __future__ import annotations

import numpy as np
import pytest

from genlip_lit.data import world
from genlip_lit.data.world import WorldConfig, class_names, generate_world_scene, parse_caption


def test_deterministic_per_seed_and_index_and_free_of_global_rng() -> None:
    a, b = generate_world_scene(3, 7), generate_world_scene(3, 7)
    assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption
    assert np.array_equal(a.patch_shape, b.patch_shape) and np.array_equal(a.patch_color, b.patch_color)
    np.random.seed(123)
    assert generate_world_scene(3, 7).image.tobytes() == a.image.tobytes()
    assert generate_world_scene(3, 8).image.tobytes() != a.image.tobytes()
    assert generate_world_scene(4, 7).caption != a.caption or generate_world_scene(4, 7).image != a.image
    sheet = world.contact_sheet(seed=3, count=8, columns=4)  # the README's picture: scenes side by side
    assert sheet.size == (256, 128) and sheet.crop((192, 64, 256, 128)).tobytes() == a.image.tobytes()


def test_captions_parse_back_to_the_scene_description() -> None:
    """The parser check: on 150 scenes the caption, read back, is the description the scene was drawn from."""
    scenes = [generate_world_scene(0, i, WorldConfig(max_objects=4)) for i in range(150)]
    for s in scenes:
        assert parse_caption(s.caption) == s.description(), s.caption
    # and the sample covers the world's variety: glyphs and shapes, every texture, blur, relations, counts
    kinds = {o.kind for s in scenes for o in s.objects}
    assert kinds == {"shape", "digit", "letter"}
    assert {s.texture for s in scenes} == set(world.TEXTURES)
    assert {o.fill for s in scenes for o in s.objects} == set(world.FILLS + world.STYLES)
    assert any(s.blurry for s in scenes) and not all(s.blurry for s in scenes)
    assert {s.relation for s in scenes} == {None, "left of", "right of", "above", "below"}
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}


def test_a_changed_caption_no_longer_parses_to_the_scene() -> None:
    """The parser reads what the caption says: a wrong word gives a different description (not a lenient match)."""
    s = next(s for i in range(50) if len((s := generate_world_scene(1, i)).objects) >= 2)
    first = s.objects[0]
    other = next(c for c in world.COLORS if c != first.color and c not in ("white", "black"))
    wrong = s.caption.replace(f"a {first.size} {first.color} ", f"a {first.size} {other} ", 1)
    assert parse_caption(wrong) != s.description()


def test_label_and_maps_name_the_drawn_objects() -> None:
    names = class_names()
    for i in range(40):
        s = generate_world_scene(2, i)
        assert names[s.label] == s.objects[0].noun  # the largest object's class
        nouns = {names.index(o.noun) + 1 for o in s.objects}
        assert set(np.unique(s.patch_shape)) - {0} <= nouns
        assert s.patch_shape.shape == (8, 8) and s.image.size == (64, 64)
        for o in s.objects:  # every object's box centre lies in the region its phrase names
            row, col = divmod(world.POSITIONS.index(o.position), 3)
            cx, cy = (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2
            assert col * 64 / 3 <= cx < (col + 1) * 64 / 3 + 0.5 and row * 64 / 3 <= cy < (row + 1) * 64 / 3 + 0.5


def test_mixture_knobs_change_what_is_drawn() -> None:
    only_digits = [generate_world_scene(0, i, WorldConfig(glyph_prob=1.0, digit_prob=1.0)) for i in range(20)]
    assert {o.kind for s in only_digits for o in s.objects} == {"digit"}
    shapes = [generate_world_scene(0, i, WorldConfig(glyph_prob=0.0, busy_prob=0.0, blur_prob=0.0)) for i in range(20)]
    assert {o.kind for s in shapes for o in s.objects} == {"shape"}
    assert {s.texture for s in shapes} == {"plain"} and not any(s.blurry for s in shapes)
    with pytest.raises(ValueError, match="glyph_prob"):
        WorldConfig(glyph_prob=1.5)


def test_fill_prob_draws_one_object_filling_the_frame() -> None:
    import hashlib

    # the default scenes do not move with the knob at 0 (no random draw is taken for it): pinned bytes of scene 3
    assert hashlib.sha256(generate_world_scene(0, 3).image.tobytes()).hexdigest()[:16] == DEFAULT_SCENE_3
    cfg = WorldConfig(image_size=32, max_objects=1, glyph_prob=1.0, fill_prob=1.0)
    for i in range(12):
        s = generate_world_scene(0, i, cfg)
        (o,) = s.objects
        x0, y0, x1, y1 = o.box
        assert 0.8 * 32 - 1 <= x1 - x0 <= 32 and x0 == y0 and 32 - x1 in (x0, x0 + 1)  # centred, 80-100% of the side
        assert (o.size, o.position) == ("large", "in the center")
        assert parse_caption(s.caption) == s.description()
    several = [generate_world_scene(0, i, WorldConfig(min_objects=2, fill_prob=1.0)) for i in range(5)]
    assert all(o.box[2] - o.box[0] <= 0.62 * 64 + 1 for s in several for o in s.objects)  # one-object scenes only
    with pytest.raises(ValueError, match="fill_prob"):
        WorldConfig(fill_prob=-0.1)


DEFAULT_SCENE_3 = "66908394a97072cc"  # at 9ec322b, before fill_prob existed


def test_compact_tokenizer_spells_every_world_caption() -> None:
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer

    tok = OpenCLIPTokenizer(compact_corpus="world")
    for i in range(30):
        caption = generate_world_scene(5, i, WorldConfig(max_objects=4)).caption
        before = tok.num_unknown
        assert tok.decode(tok.encode(caption)).replace(" ", "") == caption.replace(" ", "")
        assert tok.num_unknown == before


def test_selected_from_the_synthetic_block(tmp_path) -> None:
    from genlip_lit.data.datamodule import GenLIPDataModule
    from genlip_lit.errors import GenLIPUserError

    dm = GenLIPDataModule(synthetic={"world": "rich", "num_train": 6, "num_val": 2, "glyph_prob": 1.0},
                          cache_dir=str(tmp_path), image_size=64, num_workers=0)
    shapes = GenLIPDataModule(synthetic={"num_train": 6, "num_val": 2}, cache_dir=str(tmp_path), num_workers=0)
    assert dm.data_dir != shapes.data_dir  # its own cache
    with pytest.raises(GenLIPUserError, match="word_prob"):  # a shapes-world key is not a rich-world key
        GenLIPDataModule(synthetic={"world": "rich", "word_prob": 0.5}, cache_dir=str(tmp_path))
    from genlip_lit.data.datamodule import synthetic_params

    # command-line values of the dict arrive as strings: read as YAML scalars, as from a config file
    assert synthetic_params({"world": "rich", "num_train": "600", "glyph_prob": "0.8"})["num_train"] == 600
    with pytest.raises(GenLIPUserError, match="world must be one of"):
        GenLIPDataModule(synthetic={"world": "big"}, cache_dir=str(tmp_path))
    dm.prepare_data()
    from genlip_lit.eval.labelled import read_meta

    meta = read_meta(dm.data_dir)
    assert meta["world"] == "rich" and meta["class_names"] == class_names() and meta["num_train"] == 6
