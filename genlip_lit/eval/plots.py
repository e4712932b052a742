"""Figures of the evaluations as RGB uint8 arrays [H, W, 3], for any logger and for the reports.

Curves are drawn with matplotlib (its object API on an Agg canvas: no pyplot state, no display needed), with
the legend outside the data; picture grids (readout tiles) are assembled with PIL.

    image = panels_plot([("train loss", {"genlip": [(0, 2.1), (800, 1.2)]})], x_label="samples seen")
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Series = dict[str, list[tuple[float, float]]]  # name -> (x, y) points; NaN points are left out


def _render(fig) -> np.ndarray:
    """The figure as RGB uint8, cropped to what it draws (an outside legend included)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _finite(points: Sequence[tuple[float, float | None]]) -> list[tuple[float, float]]:
    """The plottable points: a NaN, an infinity or a null (NaN as JSON writes it, e.g. compare's result.json) is
    a gap."""
    return sorted((float(x), float(y)) for x, y in points if y is not None and x == x and y == y
                  and not math.isinf(y))


def _percent_log_axis(ax, values: list[float]) -> None:
    """A log axis in percent that always shows the 1% line: attention masses near 1/N are small fractions."""
    from matplotlib.ticker import PercentFormatter

    positive = [v for v in values if v > 0]
    low = min([0.001, *positive])
    ax.set_yscale("log")
    ax.set_ylim(low / 1.5, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    ax.axhline(0.01, color="0.6", linewidth=0.8, linestyle=":", zorder=0)


def line_plot(
    series: dict[str, list[float]],
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    percent_log: bool = False,
) -> np.ndarray:
    """`line_figure` as an RGB uint8 image."""
    return _render(line_figure(series, title, x_label, y_label, percent_log))


def line_figure(
    series: dict[str, list[float]],
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    percent_log: bool = False,
) -> Any:
    """One line per series over x = 0..n-1 (layers), markers on every point; legend right of the axes.
    `percent_log`: a log y axis in percent (fractions of 1), with a dotted line at 1%."""
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    values = []
    for name, ys in series.items():
        points = _finite(list(enumerate(ys)))
        values += [y for _, y in points]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, linewidth=1.5, label=name)
    if percent_log:
        _percent_log_axis(ax, values)
    n = max((len(v) for v in series.values()), default=1)
    ax.set_xticks(range(n))
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    ax.grid(True, alpha=0.3)
    if any(line.get_label() in series for line in ax.get_lines()):
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return fig


def panels_plot(
    panels: Sequence[tuple[str, Series]],
    x_label: str = "",
    columns: int = 3,
    x_from_zero: bool = True,
) -> np.ndarray:
    """`panels_figure` as an RGB uint8 image."""
    return _render(panels_figure(panels, x_label, columns, x_from_zero))


def panels_figure(
    panels: Sequence[tuple[str, Series]],
    x_label: str = "",
    columns: int = 3,
    x_from_zero: bool = True,
) -> Any:
    """Small multiples: one axes per (title, series), one shared legend right of them all.

    With `x_from_zero` the x axes start at 0 (counts such as samples seen); sparse series get point markers.
    """
    columns = max(1, min(columns, len(panels) or 1))
    rows = max(1, math.ceil(len(panels) / columns))
    fig = _figure(3.6 * columns, 2.6 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    handles: dict[str, object] = {}
    colors: dict[str, str] = {}
    palette = [f"C{i}" for i in range(10)]
    for ax, (title, series) in zip(axes, panels):
        for name, points in series.items():
            color = colors.setdefault(name, palette[len(colors) % len(palette)])
            points = _finite(points)
            if not points:
                continue
            (line,) = ax.plot(*zip(*points), color=color, linewidth=1.5,
                              marker="o" if len(points) < 30 else None, markersize=3, label=name)
            handles.setdefault(name, line)
        if x_from_zero:
            ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x_label, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if handles:
        fig.tight_layout()
        fig.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.0, 1.0),
                   frameon=False)
    else:
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- pictures (PIL)
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
