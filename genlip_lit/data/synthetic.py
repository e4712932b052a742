"""Look at a scene: ``python -c "from genlip_lit.data.synthetic import generate_scene as g; s = g(0, 0); print(s.caption); s.image.resize((256, 256)).show()"``

Procedural captioned scenes: the project's embedded, offline default dataset.

Each scene is a plain gray background with 1-3 colored shapes and, optionally, a short rendered
word (a tiny OCR task). Everything is a pure function of ``(seed, index, config)`` so a dataset of
any length needs no storage, and the captions follow a rigid grammar so that a tiny transformer can
learn to produce them on a laptop CPU within minutes:

    "a large red circle at the top left, a small blue square in the center and a small green star
    at the bottom. the word cat is written in white."

Besides the caption, each scene carries an image-level class (shape of the largest object) and
per-patch shape/color label maps, used by linear-probe and dense-probe evaluations.

By default every scene is an ``image_size`` square and the word is drawn at a quarter of its side.
For stage-2 (native aspect ratio) data, ``SceneConfig.max_image_size`` gives each scene its own width
and height (independent multiples of ``patch_size`` in ``[image_size, max_image_size]``): object sizes
follow the shorter side, each position phrase names the third of the width / height holding the
object's box center, and the label maps are ``[H / patch, W / patch]``. ``SceneConfig.word_font_px``
renders the word at a fixed pixel size ("small text"), legible at native resolution but not once the
scene is shrunk to a low fixed resolution: reading it rewards resolution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
# Saturated hues that stay distinct from each other and from any gray background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 220, 20),
    "purple": (150, 50, 200),
    "orange": (250, 130, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
# 3x3 grid of regions, row-major; an object's phrase is the region holding its box center.
POSITIONS: tuple[str, ...] = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)  # fmt: skip
# Short concrete words for the OCR part; none collides with another caption word.
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "map", "cup", "hat", "box", "car", "bus", "pen",
    "key", "owl", "fox", "bee", "egg", "kite", "moon", "fish", "bird", "tree",
)  # fmt: skip
TEXT_COLORS: dict[str, int] = {"black": 0, "white": 255}

# Object side length as a fraction of the image's shorter side (64 px -> small 14-19 px, large 24-31 px).
_SIZE_FRACTIONS: dict[str, tuple[float, float]] = {"small": (0.22, 0.30), "large": (0.38, 0.48)}
_COLOR_NAMES: tuple[str, ...] = tuple(COLORS)


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the generator; the defaults are the project's standard 64 px dataset.

    Square scenes by default. ``max_image_size`` (a multiple of ``patch_size``, at least ``image_size``)
    turns on variable sizes and aspect ratios: each scene's width and height are drawn independently and
    uniformly from the multiples of ``patch_size`` in ``[image_size, max_image_size]``. ``word_font_px``
    (at least 6) draws the word at that pixel size whatever the scene size, instead of a quarter of the
    (shorter) side; the word must fit an ``image_size`` canvas. With both left at None the scenes are
    exactly those of earlier versions (same random stream).

    Recommended stage-2 ("native aspect ratio, small text") data for the 64 px / patch 8 stage-1 preset:
    ``image_size=96, max_image_size=160, word_font_px=10, word_prob=1.0``. At 10 px every word reads
    cleanly on both backgrounds (6 px x-height; words 6-10 px tall, 13-26 px wide); 9 px is still
    legible, 8 px is marginal. Shrunk to 64x64 (0.4-0.67x) the letters are 2-4 px smudges that cannot be
    read, while shapes, colors and positions (a fifth to a half of the shorter side) still can. A word
    in every scene gives the OCR part of the caption enough weight; scenes are 144-400 patches (12x12 to
    20x20 at patch 8).
    """

    image_size: int = 64  # side of square scenes; the smallest width / height with max_image_size
    patch_size: int = 8  # the per-patch label maps; grid_align and max_image_size sizes use its grid
    min_objects: int = 1
    max_objects: int = 3
    word_prob: float = 0.0  # probability that a short rendered word (OCR) appears in the scene
    noise: int = 8  # amplitude of the gray background noise (+-), never applied to objects
    max_overlap: float = 0.15  # accepted box overlap (fraction of the smaller box) before retrying
    patch_min_fraction: float = 0.25  # an object must cover this much of a patch to label it
    # Start object boxes on the patch grid. A ViT sees a shape through its patches, so a shape at 64 different
    # sub-patch offsets is 64 different token patterns to learn: measured on the tiny preset, a shape
    # classifier reached 94% after 300 steps with aligned boxes and 26% without. Off = any pixel offset.
    grid_align: bool = True
    # Variable sizes and aspect ratios: width and height drawn independently from the multiples of
    # patch_size in [image_size, max_image_size]. None = square image_size scenes.
    max_image_size: int | None = None
    # Absolute font size of the rendered word ("small text"). None = a quarter of the (shorter) side.
    word_font_px: int | None = None

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.max_image_size is not None:
            if not _is_int(self.max_image_size):
                raise ValueError(f"max_image_size must be an integer or None, got {self.max_image_size!r}")
            if self.max_image_size < self.image_size or self.max_image_size % self.patch_size:
                raise ValueError(
                    f"max_image_size must be a multiple of patch_size {self.patch_size} and >= image_size "
                    f"{self.image_size}, got {self.max_image_size}"
                )
        if self.word_font_px is not None:
            if not _is_int(self.word_font_px) or self.word_font_px < 6:
                raise ValueError(f"word_font_px must be an integer >= 6 or None, got {self.word_font_px!r}")
            width, height = _widest_word(self.word_font_px)
            if max(width, height) > self.image_size:
                raise ValueError(
                    f"word_font_px {self.word_font_px} draws words up to {width}x{height} px, which do not fit "
                    f"an image_size {self.image_size} scene"
                )
        if not 1 <= self.min_objects <= self.max_objects <= len(POSITIONS):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 9, got {self.min_objects}, {self.max_objects}"
            )
        if not 0.0 <= self.word_prob <= 1.0:
            raise ValueError(f"word_prob must be in [0, 1], got {self.word_prob}")
        if not 0 <= self.noise <= 25:
            raise ValueError(f"noise must be in [0, 25], got {self.noise}")


@dataclass
class SceneObject:
    """One drawn shape; ``box`` is ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive."""

    shape: str
    color: str
    size: str
    position: str
    box: tuple[int, int, int, int]


@dataclass
class Scene:
    """A generated image with its caption and labels (objects are listed largest first).

    ``patch_shape`` / ``patch_color`` are ``[height // patch_size, width // patch_size]`` (rows, columns).
    """

    image: Image.Image
    caption: str
    label: int
    patch_shape: np.ndarray
    patch_color: np.ndarray
    objects: list[SceneObject]
    word: str | None
    word_box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) of the drawn word, x1/y1 exclusive

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels, as PIL's ``Image.size``."""
        return self.image.size


def class_names() -> list[str]:
    """Names of the image-level classes (``Scene.label`` indexes this list)."""
    return list(SHAPES)


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain (punctuation "." and "," aside), in a stable order."""
    words = ["a", "and", "the", "word", "is", "written", "in"]
    words += list(SIZES) + list(COLORS) + list(SHAPES) + list(TEXT_COLORS)
    words += [w for phrase in POSITIONS for w in phrase.split()] + list(WORDS)
    return list(dict.fromkeys(words))


# ---------------------------------------------------------------- what evaluations need to know about the scenes
# Everything an evaluation reads about this data (class names, words, prompt templates, label maps, the caption
# grammar) comes from here, through the data views of genlip_lit/eval/data.py.
def zero_shot_templates() -> list[str]:
    """Prompt templates for the classes (shape of the largest object): captions say size and colour before the
    shape ("a large red circle ..."), so every size/colour prefix is a template."""
    return [f"a {size} {color} {{}}" for size in SIZES for color in COLORS]


def patch_label_words() -> dict[str, list[str]]:
    """The per-patch label maps (`Scene.patch_shape`, `Scene.patch_color`): value v > 0 names words[v - 1]."""
    return {"shape": list(SHAPES), "color": list(_COLOR_NAMES)}


_MENTION = re.compile(rf"\b({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\b")
_WORD_PHRASE = re.compile(r"\bthe word (\w+) is written\b", re.IGNORECASE)


def named_objects(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs a caption names ("... red circle ..."), in order."""
    return _MENTION.findall(caption.lower())


def written_word(caption: str) -> str | None:
    """The word a caption says is written ("... the word cat is written in black."), lower-cased; None if none."""
    match = _WORD_PHRASE.search(caption)
    return match.group(1).lower() if match else None


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Binary (side x side) mask of a shape filling its box; binary so object pixels keep exact colors."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    e = side - 1  # last pixel coordinate
    h = e / 2
    if shape == "circle":
        draw.ellipse((0, 0, e, e), fill=1)
    elif shape == "square":
        draw.rectangle((0, 0, e, e), fill=1)
    elif shape == "triangle":
        draw.polygon([(h, 0), (e, e), (0, e)], fill=1)
    elif shape == "diamond":
        draw.polygon([(h, 0), (e, h), (h, e), (0, h)], fill=1)
    elif shape == "star":
        # Fat 5-point star (inner/outer radius 0.5) so even small stars read as stars, not specks;
        # shifted down so its vertical extent (1 + cos 36deg) * r is centered in the box.
        r = side / 2
        cy = r + r * (1 - np.cos(np.pi / 5)) / 2
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.5 * r)
        draw.polygon(list(zip(h + radii * np.cos(angles), cy - 0.5 + radii * np.sin(angles))), fill=1)
    elif shape == "cross":
        t = side / 3
        draw.rectangle((0, round(t), e, round(e - t)), fill=1)
        draw.rectangle((round(t), 0, round(e - t), e), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(mask, dtype=bool)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@lru_cache(maxsize=1024)
def _cached_mask(shape: str, side: int) -> np.ndarray:
    return _shape_mask(shape, side)


@lru_cache(maxsize=1024)
def _glyphs(word: str, font_size: int) -> np.ndarray:
    """Antialiased coverage (0..1, tightly cropped) of ``word``; cached since the word list is tiny."""
    # Pillow >= 10.1 bundles a scalable default font, so no font file or network is needed.
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = font.getbbox(word)
    canvas = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(canvas).text((-left, -top), word, fill=255, font=font)
    return np.asarray(canvas, dtype=np.float32)[..., None] / 255.0


@lru_cache(maxsize=32)
def _widest_word(font_size: int) -> tuple[int, int]:
    """Largest (width, height) over the rendered WORDS at ``font_size``."""
    shapes = [_glyphs(w, font_size).shape for w in WORDS]
    return max(s[1] for s in shapes), max(s[0] for s in shapes)


@lru_cache(maxsize=64)
def _patch_index(height: int, width: int, patch: int) -> np.ndarray:
    """Row-major patch number of every pixel of a (height x width) image."""
    rows, cols = np.arange(height) // patch, np.arange(width) // patch
    return rows[:, None] * (width // patch) + cols[None, :]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Box intersection as a fraction of the smaller box."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _corner_range(region: int, side: int, size: int) -> tuple[int, int]:
    """Inclusive range of box starts along one axis whose box center lies in third ``region``."""
    lo = max(0, int(np.ceil(region * size / 3 - side / 2)))
    hi = min(size - side, int(np.ceil((region + 1) * size / 3 - side / 2)) - 1)
    return lo, hi


def _align_range(bounds: tuple[int, int], step: int) -> tuple[int, int] | tuple[int, int, int]:
    """Grid-aligned version of an inclusive start range (in units of `step`), or the range unchanged if it
    holds no multiple of `step` (narrow ranges at the image border): the phrase must stay true."""
    lo, hi = -(-bounds[0] // step), bounds[1] // step
    return (lo, hi, step) if lo <= hi else bounds


def _start(rng: np.random.Generator, bounds: tuple[int, ...]) -> int:
    """A box start drawn uniformly from a pixel range (lo, hi) or a grid range (lo, hi, step)."""
    value = int(rng.integers(bounds[0], bounds[1] + 1))
    return value * bounds[2] if len(bounds) == 3 else value


def _place(
    rng: np.random.Generator,
    side: int,
    placed: list[tuple[int, int, int, int]],
    free: list[int],
    cfg: SceneConfig,
    width: int,
    height: int,
) -> tuple[int, tuple[int, int, int, int]]:
    """Pick a still-free region and a box in it, preferring little overlap with earlier boxes.

    Regions are the 3x3 grid of thirds of the width (columns) and of the height (rows)."""
    best: tuple[float, int, tuple[int, int, int, int]] | None = None
    # Visit free regions in random order so positions stay uniform when nothing is in the way.
    for region in rng.permutation(free):
        row, col = divmod(int(region), 3)
        xr, yr = _corner_range(col, side, width), _corner_range(row, side, height)
        if cfg.grid_align:
            xr, yr = _align_range(xr, cfg.patch_size), _align_range(yr, cfg.patch_size)
        for _ in range(2):
            x0, y0 = _start(rng, xr), _start(rng, yr)
            box = (x0, y0, x0 + side, y0 + side)
            score = max((_overlap(box, p) for p in placed), default=0.0)
            if best is None or score < best[0]:
                best = (score, int(region), box)
            if score <= cfg.max_overlap:
                return best[1], best[2]
    assert best is not None
    return best[1], best[2]


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _draw_word(
    rng: np.random.Generator, pixels: np.ndarray, ids: np.ndarray, light_bg: bool, cfg: SceneConfig
) -> tuple[str, str, tuple[int, int, int, int]]:
    """Render a random word in black/white where it hides the fewest object pixels; returns its box too."""
    word = WORDS[int(rng.integers(len(WORDS)))]
    color = "black" if light_bg else "white"
    height, width = ids.shape
    font_px = cfg.word_font_px if cfg.word_font_px is not None else max(8, round(min(height, width) * 0.25))
    # Crop only matters for tiny images where the word would not fit at all (never with word_font_px).
    alpha = _glyphs(word, font_px)[:height, :width]
    th, tw = alpha.shape[:2]
    # Integral image of the object canvas: each candidate box's occlusion costs O(1).
    occ = np.zeros((height + 1, width + 1), dtype=np.int32)
    occ[1:, 1:] = (ids > 0).cumsum(0).cumsum(1)
    xs = rng.integers(0, width - tw + 1, 12)
    ys = rng.integers(0, height - th + 1, 12)
    cost = occ[ys + th, xs + tw] - occ[ys, xs + tw] - occ[ys + th, xs] + occ[ys, xs]
    best = int(np.argmin(cost))  # first minimum: candidates are already in random order
    x0, y0 = int(xs[best]), int(ys[best])
    region = pixels[y0 : y0 + th, x0 : x0 + tw]
    # Alpha-blend (keeps the antialiased glyphs legible); covered pixels no longer show an object.
    region[:] = (region * (1 - alpha) + TEXT_COLORS[color] * alpha + 0.5).astype(np.uint8)
    ids[y0 : y0 + th, x0 : x0 + tw][alpha[..., 0] > 0.5] = 0
    return word, color, (x0, y0, x0 + tw, y0 + th)


def generate_scene(seed: int, index: int, config: SceneConfig = SceneConfig()) -> Scene:
    """Generate scene ``index`` of the dataset ``seed``; deterministic and independent of global RNG."""
    cfg = config
    rng = np.random.default_rng([seed, index])
    if cfg.max_image_size is None:  # no draw: square scenes keep their random stream
        width = height = cfg.image_size
    else:
        p = cfg.patch_size
        cells = rng.integers(cfg.image_size // p, cfg.max_image_size // p + 1, 2)
        width, height = int(cells[0]) * p, int(cells[1]) * p
    short = min(width, height)

    # Plain gray background (dark or light at random) with mild gray noise.
    light_bg = bool(rng.random() < 0.5)
    level = int(rng.integers(165, 216) if light_bg else rng.integers(25, 76))
    noise = rng.integers(-cfg.noise, cfg.noise + 1, (height, width, 1), dtype=np.int16)
    # No clipping needed: level +- noise stays inside 0..255 (noise <= 25 is validated).
    pixels = np.repeat((level + noise).astype(np.uint8), 3, axis=2)

    # Sample objects, then order them largest first: size class, then drawn pixel area.
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    specs = []
    for _ in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = _COLOR_NAMES[int(rng.integers(len(COLORS)))]
        size_name = SIZES[int(rng.integers(len(SIZES)))]
        lo, hi = _SIZE_FRACTIONS[size_name]
        side = int(rng.integers(round(lo * short), round(hi * short) + 1))
        mask = _cached_mask(shape, side)
        specs.append((SIZES.index(size_name), int(mask.sum()), shape, color, size_name, side, mask))
    specs.sort(key=lambda s: (s[0], s[1]), reverse=True)  # stable: ties keep sampling order

    # Place and paint largest first, so smaller objects land on top and stay whole. The id
    # canvas records which object each pixel finally shows, for the label maps.
    ids = np.zeros((height, width), dtype=np.uint8)
    objects: list[SceneObject] = []
    free = list(range(len(POSITIONS)))
    for k, (_, _, shape, color, size_name, side, mask) in enumerate(specs):
        region, box = _place(rng, side, [o.box for o in objects], free, cfg, width, height)
        free.remove(region)
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1][mask] = COLORS[color]
        ids[y0:y1, x0:x1][mask] = k + 1
        objects.append(SceneObject(shape, color, size_name, POSITIONS[region], box))

    caption = _join([f"a {o.size} {o.color} {o.shape} {o.position}" for o in objects]) + "."
    word, word_box = None, None
    if rng.random() < cfg.word_prob:  # drawn last: enabling words leaves the object layout unchanged
        word, text_color, word_box = _draw_word(rng, pixels, ids, light_bg, cfg)
        caption += f" the word {word} is written in {text_color}."

    # Per patch: the object showing the most pixels, if it covers enough of the patch.
    p = cfg.patch_size
    gh, gw = height // p, width // p
    # One bincount over (patch, object id) pairs: far cheaper than per-object comparisons.
    pairs = _patch_index(height, width, p) * (n + 1) + ids
    counts = np.bincount(pairs.ravel(), minlength=gh * gw * (n + 1))
    counts = counts.reshape(gh, gw, n + 1)[..., 1:]
    owner = np.where(counts.max(2) >= cfg.patch_min_fraction * p * p, counts.argmax(2) + 1, 0)
    shape_lut = np.array([0] + [SHAPES.index(o.shape) + 1 for o in objects], dtype=np.uint8)
    color_lut = np.array([0] + [_COLOR_NAMES.index(o.color) + 1 for o in objects], dtype=np.uint8)

    return Scene(
        image=Image.fromarray(pixels),
        caption=caption,
        label=SHAPES.index(objects[0].shape),
        patch_shape=shape_lut[owner],
        patch_color=color_lut[owner],
        objects=objects,
        word=word,
        word_box=word_box,
    )
