"""The rich embedded world: shapes with textures, digits and letters in many fonts and hands, textured and
cluttered backgrounds, counts and spatial relations. Generated locally, a pure function of (seed, index, config).

    python -c "from genlip_lit.data.world import generate_world_scene as g; s = g(0, 3); print(s.caption)"
    # a large brown dotted cross at the bottom left and a large purple printed digit 4 at the top right. the cross
    # is left of the digit 4. there are two objects. the background is light and plain.

The scenes of `synthetic.py` (6 shapes x 6 colours x 2 sizes on plain gray) teach a tiny encoder colours and
blobs, not strokes: its features transfer to real handwritten digits no better than random init. This world
draws what real images are made of at small scale: 12 shapes filled solid, striped, dotted, checkered or as an
outline; the ten digits and ten letters as glyphs in eight bundled fonts (matplotlib's DejaVu, STIX and Computer
Modern: no download) printed, bold, serif, typed or "handwritten" (any font, slanted, rotated, with a thinner or
thicker stroke and a wobbly mesh warp); backgrounds dark or light, plain, noisy, graded, striped, dotted or
cluttered with stray strokes; 3 sizes anywhere in the frame (no patch-grid alignment); some scenes rendered at
low resolution and scaled back up (blurry). The caption is written from the scene description
(`WorldScene.description()`) by a fixed grammar, and `parse_caption` reads it back to the same description (the
tests check this on a sample of scenes), so every caption names exactly what is drawn.

Select it in a fit config with `data.synthetic.world: rich` (`experiments/quickstart_transfer.yaml`); the other
keys of `data.synthetic` are the `WorldConfig` fields below. Its scan-like mixture (one frame-filling glyph, mostly
blurry: `experiments/transfer/scan.yaml`) trains a tiny encoder that beats its random init on real digits.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib.util import find_spec
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from genlip_lit.data.synthetic import POSITIONS

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon", "heart",
                           "arrow", "crescent", "bar")
DIGITS: tuple[str, ...] = tuple("0123456789")
LETTERS: tuple[str, ...] = tuple("abeghkmrty")  # lower case, distinct from each other and from the digits
FILLS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "outlined")  # shapes
STYLES: tuple[str, ...] = ("printed", "bold", "serif", "typed", "handwritten")  # glyphs
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 90, 235), "yellow": (240, 220, 20),
    "purple": (150, 50, 200), "orange": (250, 130, 20), "pink": (245, 120, 190), "cyan": (30, 210, 220),
    "brown": (130, 75, 30), "white": (250, 250, 250), "black": (5, 5, 5),
}
SIZES: tuple[str, ...] = ("small", "medium", "large")
TONES: tuple[str, ...] = ("dark", "light")
TEXTURES: tuple[str, ...] = ("plain", "noisy", "graded", "striped", "dotted", "cluttered")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")
_SIZE_FRACTIONS = {"small": (0.20, 0.28), "medium": (0.32, 0.42), "large": (0.46, 0.62)}  # of the image side
_STYLE_FONTS = {"printed": ("DejaVuSans.ttf",), "bold": ("DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf"),
                "serif": ("DejaVuSerif.ttf", "STIXGeneral.ttf", "cmr10.ttf"), "typed": ("DejaVuSansMono.ttf", "cmtt10.ttf")}
_HAND_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneralItalic.ttf",
               "cmss10.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf", "cmr10.ttf")


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the rich world (`data.synthetic` keys with `world: rich`). The mixture knobs are what
    `benchmarks/sweep_transfer.py` varies: how many objects are glyphs, how many glyphs are digits, how often a
    scene is blurry or its background busy."""

    image_size: int = 64
    patch_size: int = 8  # the per-patch label maps
    min_objects: int = 1
    max_objects: int = 3
    glyph_prob: float = 0.5  # an object is a digit or letter (else a shape)
    digit_prob: float = 0.6  # a glyph is a digit (else a letter)
    blur_prob: float = 0.2  # the scene is drawn at 1/3-1/8 of its size and scaled back up
    busy_prob: float = 0.5  # the background is textured or cluttered (else plain)
    # a one-object scene's object fills the frame (a "large" object of 80-100% of the side, in the center), as
    # a scanned handwritten digit does; 0 draws the default scenes exactly as before (no random draw is taken)
    fill_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size or self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 and a multiple of patch_size {self.patch_size}, got "
                             f"{self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}, {self.max_objects}")
        for name in ("glyph_prob", "digit_prob", "blur_prob", "busy_prob", "fill_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class WorldObject:
    """One drawn object: a shape (`kind` "shape", `fill` a FILLS entry) or a glyph (`kind` "digit"/"letter",
    `name` the character, `fill` a STYLES entry). `box` is (x0, y0, x1, y1), x1/y1 exclusive."""

    kind: str
    name: str
    color: str
    size: str
    fill: str
    position: str
    box: tuple[int, int, int, int]

    @property
    def noun(self) -> str:
        """How captions name it: "circle", "digit 7", "letter k" (also its class name)."""
        return self.name if self.kind == "shape" else f"{self.kind} {self.name}"


@dataclass
class WorldScene:
    image: Image.Image
    caption: str
    label: int  # class of the largest object (`class_names()`)
    patch_shape: np.ndarray  # [rows, cols]: 0 background, else 1 + class index
    patch_color: np.ndarray  # [rows, cols]: 0 background, else 1 + colour index
    objects: list[WorldObject]  # largest first
    tone: str
    texture: str
    blurry: bool
    relation: str | None  # "left of" / "right of" / "above" / "below": objects[0] relative to objects[1]

    def description(self) -> dict[str, Any]:
        """What the caption states, in the form `parse_caption` returns."""
        return {"objects": [(o.size, o.color, o.fill, o.noun, o.position) for o in self.objects],
                "relation": self.relation, "count": len(self.objects), "tone": self.tone, "texture": self.texture,
                "blurry": self.blurry}


# ------------------------------------------------------------------- what evaluations need to know about it
def class_names() -> list[str]:
    return list(SHAPES) + [f"digit {d}" for d in DIGITS] + [f"letter {c}" for c in LETTERS]


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain (punctuation aside), in a stable order."""
    words = ["a", "and", "the", "is", "of", "there", "are", "objects", "background", "image", "blurry", "left",
             "right", "above", "below", "digit", "letter", *SIZES, *COLORS, *FILLS, *STYLES, *SHAPES, *DIGITS,
             *LETTERS, *TONES, *TEXTURES, *COUNT_WORDS[2:]]
    words += [w for phrase in POSITIONS for w in phrase.split()]
    return list(dict.fromkeys(words))


def zero_shot_templates() -> list[str]:
    return [f"a {size} {color} {fill} {{}}" for size in ("medium",) for color in ("white", "red", "blue")
            for fill in ("solid", "printed", "handwritten")]


def patch_label_words() -> dict[str, list[str]]:
    """Label maps: value v > 0 names words[v - 1] (the readout's candidate words are single words, so a glyph
    class is read as its character)."""
    return {"shape": [n.split()[-1] for n in class_names()], "color": list(COLORS)}


_COLOR_RE, _SIZE_RE = "|".join(COLORS), "|".join(SIZES)
_NOUN_RE = rf"(?:{'|'.join(SHAPES)}|digit [0-9]|letter [{''.join(LETTERS)}])"
_OBJECT = re.compile(rf"a ({_SIZE_RE}) ({_COLOR_RE}) ({'|'.join(FILLS + STYLES)}) ({_NOUN_RE}) "
                     rf"({'|'.join(sorted(POSITIONS, key=len, reverse=True))})")  # longest first: "at the top right"
_RELATION = re.compile(rf"the ({_NOUN_RE}) is (left of|right of|above|below) the ({_NOUN_RE})\.")
_COUNT = re.compile(rf"there are ({'|'.join(COUNT_WORDS)}) objects\.")
_BACKGROUND = re.compile(rf"the background is ({'|'.join(TONES)}) and ({'|'.join(TEXTURES)})\.")


def parse_caption(caption: str) -> dict[str, Any]:
    """A caption read back into the form of `WorldScene.description()` (what a caption states, nothing else)."""
    first = caption.split(". ")[0]
    objects = [m.groups() for m in _OBJECT.finditer(first)]
    relation = _RELATION.search(caption)
    count = _COUNT.search(caption)
    background = _BACKGROUND.search(caption)
    return {"objects": objects, "relation": relation.group(2) if relation else None,
            "count": COUNT_WORDS.index(count.group(1)) if count else len(objects),
            "tone": background.group(1) if background else None,
            "texture": background.group(2) if background else None, "blurry": "the image is blurry." in caption}


# ------------------------------------------------------------------------------------------------- drawing
def _fonts_dir() -> str:
    spec = find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise RuntimeError("the rich world draws glyphs with matplotlib's bundled fonts: pip install matplotlib")
    return os.path.join(os.path.dirname(spec.origin), "mpl-data", "fonts", "ttf")


@lru_cache(maxsize=512)
def _glyph(char: str, font_file: str, px: int = 48) -> Image.Image:
    """The character's ink (L, 0-255), tightly cropped, centred on a square canvas with a small margin."""
    font = ImageFont.truetype(os.path.join(_fonts_dir(), font_file), px)
    left, top, right, bottom = font.getbbox(char)
    w, h = right - left, bottom - top
    side = max(w, h) + 8
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text(((side - w) / 2 - left, (side - h) / 2 - top), char, fill=255, font=font)
    return canvas


def _hand(rng: np.random.Generator, ink: Image.Image) -> Image.Image:
    """A printed glyph made hand-like: thinner or thicker stroke, slant and turn, and a wobbly 4x4 mesh warp."""
    stroke = int(rng.integers(-1, 3))
    if stroke:
        ink = ink.filter(ImageFilter.MaxFilter(2 * stroke + 1) if stroke > 0 else ImageFilter.MinFilter(3))
    side = ink.size[0]
    shear, angle = float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-15, 15))
    ink = ink.transform((side, side), Image.Transform.AFFINE, (1, shear, -shear * side / 2, 0, 1, 0),
                        resample=Image.Resampling.BILINEAR).rotate(angle, resample=Image.Resampling.BILINEAR)
    n, cell = 4, side / 4
    grid = np.stack(np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="xy"), -1) * cell
    grid[1:-1, 1:-1] += rng.uniform(-0.22, 0.22, (n - 1, n - 1, 2)) * cell  # the border stays: nothing is cut
    mesh = []
    for r in range(n):
        for c in range(n):
            quad = [grid[r, c], grid[r + 1, c], grid[r + 1, c + 1], grid[r, c + 1]]
            mesh.append(((round(c * cell), round(r * cell), round((c + 1) * cell), round((r + 1) * cell)),
                         tuple(float(v) for p in quad for v in p)))
    return ink.transform((side, side), Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR)


@lru_cache(maxsize=1024)
def _shape_mask(shape: str, side: int) -> np.ndarray:
    """Coverage (0/1 float) of a shape filling a side x side box."""
    m = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(m)
    e, h = side - 1, (side - 1) / 2
    t = max(2, round(side / 5))
    if shape == "circle":
        d.ellipse((0, 0, e, e), fill=1)
    elif shape == "square":
        d.rectangle((0, 0, e, e), fill=1)
    elif shape == "triangle":
        d.polygon([(h, 0), (e, e), (0, e)], fill=1)
    elif shape == "diamond":
        d.polygon([(h, 0), (e, h), (h, e), (0, h)], fill=1)
    elif shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, h, 0.5 * h)
        d.polygon(list(zip(h + r * np.cos(a), h * 1.1 + r * np.sin(a))), fill=1)
    elif shape == "cross":
        d.rectangle((0, round(side / 3), e, round(e - side / 3)), fill=1)
        d.rectangle((round(side / 3), 0, round(e - side / 3), e), fill=1)
    elif shape == "ring":
        d.ellipse((0, 0, e, e), fill=1)
        d.ellipse((t, t, e - t, e - t), fill=0)
    elif shape == "hexagon":
        a = np.arange(6) * np.pi / 3
        d.polygon(list(zip(h + h * np.cos(a), h + h * np.sin(a))), fill=1)
    elif shape == "heart":
        d.ellipse((0, 0, h + 1, h + 1), fill=1)
        d.ellipse((h - 1, 0, e, h + 1), fill=1)
        d.polygon([(0.3, h * 0.75), (e - 0.3, h * 0.75), (h, e)], fill=1)
    elif shape == "arrow":
        d.rectangle((0, round(h - t / 2), round(e * 0.55), round(h + t / 2)), fill=1)
        d.polygon([(e * 0.5, 0), (e, h), (e * 0.5, e)], fill=1)
    elif shape == "crescent":
        d.ellipse((0, 0, e, e), fill=1)
        d.ellipse((round(side * 0.35), -1, e + round(side * 0.35), e - 1), fill=0)
    elif shape == "bar":
        d.rectangle((0, round(h - t * 0.75), e, round(h + t * 0.75)), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(m, dtype=np.float32)


def _pattern(fill: str, side: int, rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Where a shape shows its colour at full strength (1) or a darker shade (0.45), inside its mask."""
    yy, xx = np.mgrid[0:side, 0:side]
    period = int(rng.integers(3, 6))
    if fill == "solid":
        return np.ones_like(mask)
    if fill == "striped":
        return np.where(((xx + yy if rng.random() < 0.5 else xx) // 2) % period < period / 2, 1.0, 0.45)
    if fill == "dotted":
        return np.where((xx % period < 2) & (yy % period < 2), 1.0, 0.45)
    if fill == "checkered":
        return np.where(((xx // period) + (yy // period)) % 2 == 0, 1.0, 0.45)
    inner = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(3 if side < 20 else 5))
    return np.where(np.asarray(inner) > 127, 0.0, 1.0)  # outlined: only the rim is drawn


def _background(rng: np.random.Generator, size: int, tone: str, texture: str) -> np.ndarray:
    level = float(rng.integers(15, 80) if tone == "dark" else rng.integers(165, 235))
    sign = 1 if tone == "dark" else -1
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = level + rng.uniform(-4, 4, (size, size))
    if texture == "noisy":
        img += rng.uniform(-25, 25, (size, size))
    elif texture == "graded":
        angle = rng.uniform(0, 2 * np.pi)
        img += sign * 60 * ((np.cos(angle) * xx + np.sin(angle) * yy) / size + 0.5)
    elif texture == "striped":
        period = int(rng.integers(4, 10))
        img += sign * 35 * ((((xx + yy) if rng.random() < 0.5 else yy) // (period / 2)) % 2)
    elif texture == "dotted":
        period = int(rng.integers(5, 9))
        img += sign * 40 * ((xx % period < 2) & (yy % period < 2))
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB")
    if texture == "cluttered":  # stray strokes and specks: distractors the caption does not itemise
        d = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(5, 11))):
            g = int(np.clip(level + sign * rng.integers(40, 90), 0, 255))
            x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
            if rng.random() < 0.6:
                d.line((x0, y0, x1, y1), fill=(g, g, g), width=1)
            else:
                d.arc((min(x0, x1), min(y0, y1), max(x0, x1) + 2, max(y0, y1) + 2), 0, int(rng.integers(60, 300)),
                      fill=(g, g, g))
    return np.asarray(canvas, dtype=np.float32)


def _place(rng: np.random.Generator, side: int, size: int, free: list[int],
           placed: list[tuple[int, int, int, int]]) -> tuple[int, tuple[int, int, int, int]]:
    """A free 3x3 region and a box whose centre lies in it, with the least overlap of a few tries."""
    best: tuple[float, int, tuple[int, int, int, int]] | None = None
    for region in rng.permutation(free)[:4]:
        row, col = divmod(int(region), 3)
        for _ in range(3):
            cx = rng.uniform(col * size / 3, (col + 1) * size / 3)
            cy = rng.uniform(row * size / 3, (row + 1) * size / 3)
            x0 = min(max(round(cx - side / 2), 0), size - side)  # plain ints: np.clip is slow on scalars
            y0 = min(max(round(cy - side / 2), 0), size - side)
            if not (col * size / 3 <= x0 + side / 2 < (col + 1) * size / 3
                    and row * size / 3 <= y0 + side / 2 < (row + 1) * size / 3):
                continue  # clipped at the border out of its region: the phrase would lie
            box = (x0, y0, x0 + side, y0 + side)
            score = max((_overlap(box, p) for p in placed), default=0.0)
            if best is None or score < best[0]:
                best = (score, int(region), box)
            if score <= 0.1:
                return best[1], best[2]
    if best is None:  # no centred box fits (not reached at the configured sizes): centre of the first region
        row, col = divmod(int(free[0]), 3)
        x0, y0 = round((col + 0.5) * size / 3 - side / 2), round((row + 0.5) * size / 3 - side / 2)
        best = (1.0, int(free[0]), (x0, y0, x0 + side, y0 + side))
    return best[1], best[2]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return 0.0 if w <= 0 or h <= 0 else w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _relation(a: WorldObject, b: WorldObject) -> str:
    """Where a's box centre lies relative to b's, along the axis where they differ most."""
    dx = (a.box[0] + a.box[2] - b.box[0] - b.box[2]) / 2
    dy = (a.box[1] + a.box[3] - b.box[1] - b.box[3]) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _sample_object(rng: np.random.Generator, cfg: WorldConfig, tone: str) -> tuple[str, str, str, str, str]:
    colors = [c for c in COLORS if c != ("black" if tone == "dark" else "white")]  # always visible
    color = colors[int(rng.integers(len(colors)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    if rng.random() < cfg.glyph_prob:
        kind = "digit" if rng.random() < cfg.digit_prob else "letter"
        chars = DIGITS if kind == "digit" else LETTERS
        return kind, chars[int(rng.integers(len(chars)))], color, size, STYLES[int(rng.integers(len(STYLES)))]
    return "shape", SHAPES[int(rng.integers(len(SHAPES)))], color, size, FILLS[int(rng.integers(len(FILLS)))]


def _coverage(rng: np.random.Generator, kind: str, name: str, fill: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, shade) of an object in its side x side box: where it covers and how bright its colour is."""
    if kind == "shape":
        mask = _shape_mask(name, side)
        shade = mask * _pattern(fill, side, rng, mask)
        return (shade, shade) if fill == "outlined" else (shade, mask)  # an outline shows the background inside
    if fill == "handwritten":
        ink = _hand(rng, _glyph(name, _HAND_FONTS[int(rng.integers(len(_HAND_FONTS)))]))
    else:
        fonts = _STYLE_FONTS[fill]
        ink = _glyph(name, fonts[int(rng.integers(len(fonts)))])
    alpha = np.asarray(ink.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    return np.clip(alpha, 0.0, 1.0), alpha


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def generate_world_scene(seed: int, index: int, config: WorldConfig = WorldConfig()) -> WorldScene:
    """Scene `index` of the world `seed`: deterministic, independent of any global RNG."""
    cfg, size = config, config.image_size
    rng = np.random.default_rng([seed, index, 0x57])
    tone = TONES[int(rng.integers(2))]
    texture = TEXTURES[1 + int(rng.integers(len(TEXTURES) - 1))] if rng.random() < cfg.busy_prob else "plain"
    pixels = _background(rng, size, tone, texture)

    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    specs = []
    for _ in range(n):
        kind, name, color, size_name, fill = _sample_object(rng, cfg, tone)
        lo, hi = _SIZE_FRACTIONS[size_name]
        specs.append((SIZES.index(size_name), int(rng.integers(round(lo * size), round(hi * size) + 1)),
                      kind, name, color, size_name, fill))
    specs.sort(key=lambda s: (s[0], s[1]), reverse=True)  # largest first: painted first, smaller ones on top
    fills = n == 1 and cfg.fill_prob > 0 and rng.random() < cfg.fill_prob
    if fills:  # "large" still: the caption grammar and vocabulary stay as they are
        specs[0] = (SIZES.index("large"), int(rng.integers(round(0.8 * size), size + 1)), *specs[0][2:5], "large",
                    specs[0][6])

    ids = np.zeros((size, size), dtype=np.uint8)
    objects: list[WorldObject] = []
    free = list(range(len(POSITIONS)))
    for k, (_, side, kind, name, color, size_name, fill) in enumerate(specs):
        if fills:
            x0 = (size - side) // 2
            region, box = POSITIONS.index("in the center"), (x0, x0, x0 + side, x0 + side)
        else:
            region, box = _place(rng, side, size, free, [o.box for o in objects])
        free.remove(region)
        alpha, cover = _coverage(rng, kind, name, fill, side)
        x0, y0, x1, y1 = box
        region_px = pixels[y0:y1, x0:x1]
        region_px[:] = region_px * (1 - cover[..., None]) + np.asarray(COLORS[color]) * alpha[..., None]
        ids[y0:y1, x0:x1][cover > 0.5] = k + 1
        objects.append(WorldObject(kind, name, color, size_name, fill, POSITIONS[region], box))

    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    blurry = bool(rng.random() < cfg.blur_prob)
    if blurry:  # drawn small and scaled back up: the look of a low-resolution scan
        small = max(8, size // int(rng.integers(3, 9)))
        image = image.resize((small, small), Image.Resampling.BOX).resize((size, size), Image.Resampling.BICUBIC)

    relation = _relation(objects[0], objects[1]) if n >= 2 else None
    sentences = [_join([f"a {o.size} {o.color} {o.fill} {o.noun} {o.position}" for o in objects]) + "."]
    if relation:
        sentences.append(f"the {objects[0].noun} is {relation} the {objects[1].noun}.")
        sentences.append(f"there are {COUNT_WORDS[n]} objects.")
    sentences.append(f"the background is {tone} and {texture}.")
    if blurry:
        sentences.append("the image is blurry.")

    p, names = cfg.patch_size, class_names()
    grid = size // p
    patch_idx = (np.arange(size) // p)[:, None] * grid + (np.arange(size) // p)[None, :]
    counts = np.bincount((patch_idx * (n + 1) + ids).ravel(), minlength=grid * grid * (n + 1))
    counts = counts.reshape(grid, grid, n + 1)[..., 1:]
    owner = np.where(counts.max(2) >= 0.25 * p * p, counts.argmax(2) + 1, 0)
    class_lut = np.array([0] + [names.index(o.noun) + 1 for o in objects], dtype=np.uint8)
    color_lut = np.array([0] + [list(COLORS).index(o.color) + 1 for o in objects], dtype=np.uint8)
    return WorldScene(image, " ".join(sentences), names.index(objects[0].noun), class_lut[owner], color_lut[owner],
                      objects, tone, texture, blurry, relation)


def world_config_dict(config: WorldConfig) -> dict[str, Any]:
    return asdict(config)


def contact_sheet(seed: int = 0, count: int = 32, columns: int = 8, config: WorldConfig = WorldConfig()) -> Image.Image:
    """Scenes 0..count-1 of world `seed` side by side (the README's picture: docs/world.png)."""
    side = config.image_size
    sheet = Image.new("RGB", (columns * side, -(-count // columns) * side))
    for i in range(count):
        sheet.paste(generate_world_scene(seed, i, config).image, ((i % columns) * side, (i // columns) * side))
    return sheet
