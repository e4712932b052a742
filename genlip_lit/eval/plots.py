"""Small charts and image grids drawn with PIL (no plotting library needed), as RGB uint8 arrays."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def line_plot(
    series: dict[str, list[float]],
    title: str = "",
    x_label: str = "",
    y_range: tuple[float, float] | None = None,
    size: tuple[int, int] = (480, 300),
) -> np.ndarray:
    """One line per series over x = 0..n-1, with a legend; NaN points are left out."""
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 44, w - 12, 24, h - 34
    values = [v for vs in series.values() for v in vs if v == v]
    lo, hi = y_range if y_range is not None else (min(values, default=0.0), max(values, default=1.0))
    if hi <= lo:
        hi = lo + 1.0
    n = max((len(v) for v in series.values()), default=1)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - frac * (bottom - top)
        draw.line((left - 3, y, left, y), fill=(0, 0, 0))
        draw.text((2, y - 5), f"{lo + frac * (hi - lo):.2f}", fill=(0, 0, 0), font=font)
    for i in range(n):
        x = left + (i + 0.5) * (right - left) / n
        draw.text((x - 3, bottom + 4), str(i), fill=(0, 0, 0), font=font)

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (i + 0.5) * (right - left) / n
        return x, bottom - (min(max(v, lo), hi) - lo) / (hi - lo) * (bottom - top)

    pixels = {name: [point(i, v) for i, v in enumerate(vs) if v == v] for name, vs in series.items()}
    _draw_series(draw, pixels, (left, top, right, h), title, x_label, mark_points=True)
    return np.asarray(img)


def _draw_series(draw: ImageDraw.ImageDraw, pixels: dict[str, list[tuple[float, float]]],
                 frame: tuple[int, int, int, int], title: str, x_label: str, mark_points: bool) -> None:
    """Each series as a line (with point markers when asked, or when sparse), a legend, the title and x label."""
    font = ImageFont.load_default()
    left, top, right, h = frame
    for k, (name, pts) in enumerate(pixels.items()):
        color = PALETTE[k % len(PALETTE)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        if mark_points or len(pts) < 30:
            for x, y in pts:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=color)
        draw.text((left + 6 + 145 * (k % 3), top + 4 + 12 * (k // 3)), name, fill=color, font=font)
    draw.text((left, 6), title, fill=(0, 0, 0), font=font)
    draw.text(((left + right) // 2 - 3 * len(x_label), h - 14), x_label, fill=(0, 0, 0), font=font)


def xy_plot(
    series: dict[str, list[tuple[float, float]]],
    title: str = "",
    x_label: str = "",
    size: tuple[int, int] = (480, 300),
    x_from_zero: bool = True,
) -> np.ndarray:
    """One line per series of (x, y) points on shared numeric axes, with a legend; NaN points are left out.
    With `x_from_zero` the x axis starts at 0 (counts such as samples seen)."""
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 50, w - 14, 24, h - 34
    points = {k: [(x, y) for x, y in v if x == x and y == y] for k, v in series.items()}
    xs = [x for v in points.values() for x, _ in v] or [0.0, 1.0]
    ys = [y for v in points.values() for _, y in v] or [0.0, 1.0]
    x_lo, x_hi = (min(0.0, min(xs)) if x_from_zero else min(xs)), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1.0), (y_hi if y_hi > y_lo else y_lo + 1.0)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - frac * (bottom - top)
        draw.line((left - 3, y, left, y), fill=(0, 0, 0))
        draw.text((2, y - 5), f"{y_lo + frac * (y_hi - y_lo):.3g}", fill=(0, 0, 0), font=font)
        x = left + frac * (right - left)
        draw.line((x, bottom, x, bottom + 3), fill=(0, 0, 0))
        label = f"{x_lo + frac * (x_hi - x_lo):.3g}"
        draw.text((x - 3 * len(label) * (1 + frac), bottom + 5), label, fill=(0, 0, 0), font=font)

    def to_pixels(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (right - left), bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

    pixels = {name: [to_pixels(x, y) for x, y in sorted(pts)] for name, pts in points.items()}
    _draw_series(draw, pixels, (left, top, right, h), title, x_label, mark_points=False)  # sparse ones get marks
    return np.asarray(img)


def label_patches(image: np.ndarray, words: list[list[str]], patch_size: int, scale: int = 4) -> np.ndarray:
    """Upscale an RGB image and write one word on each patch (`words[row][col]`), for readout grids."""
    h, w = image.shape[:2]
    big = Image.fromarray(image).resize((w * scale, h * scale), resample=Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(big)
    font = ImageFont.load_default()
    p = patch_size * scale
    for r, row in enumerate(words):
        for c, word in enumerate(row):
            x, y = c * p, r * p
            draw.rectangle((x, y, x + p - 1, y + p - 1), outline=(90, 90, 90))
            draw.text((x + 2, y + 2), word[: max(1, p // 6)], fill=(255, 255, 255), font=font, stroke_width=1,
                      stroke_fill=(0, 0, 0))
    return np.asarray(big)


def image_grid(images: list[np.ndarray], columns: int = 4, pad: int = 4) -> np.ndarray:
    """Tile same-sized RGB images into one."""
    if not images:
        return np.zeros((1, 1, 3), dtype=np.uint8)
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return grid
