"""Figures: matplotlib curves with the legend outside the data, sink masses on a log percent axis, PIL grids."""

from __future__ import annotations

import numpy as np

from genlip_lit.eval.plots import image_grid, line_figure, line_plot, panels_figure, panels_plot


def _legend_right_of_axes(fig, legend, axes) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    return all(box.x0 >= ax.get_window_extent(renderer).x1 for ax in axes)


def test_sink_scale_shows_one_percent_beside_ninety() -> None:
    masses = {"vision_to_first": [0.9, 0.012, 0.011], "text_to_first": [0.6, 0.009, float("nan")]}
    fig = line_figure(masses, "attention mass per layer", "layer", percent_log=True)
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert ax.get_yscale() == "log" and low < 0.009 and high == 1.0
    # on a linear 0..1 axis 0.9% and 1.2% are 0.3% of the height apart, both on the floor; here the gap between
    # them is more than 6% of the gap between 1.2% and 90% (log: 0.12 of 1.87 decades)
    to_pixels = ax.transData.transform
    gap_small = to_pixels((1, 0.012))[1] - to_pixels((1, 0.009))[1]
    assert gap_small > 0.06 * (to_pixels((0, 0.9))[1] - to_pixels((1, 0.012))[1])
    assert ax.yaxis.get_major_formatter()(0.01, 0) == "1%"
    assert _legend_right_of_axes(fig, ax.get_legend(), [ax])
    assert len(ax.get_lines()) == 3  # two series (the NaN point dropped) and the dotted 1% line


def test_panels_share_one_legend_outside_every_axes() -> None:
    series = {"genlip": [(0, 2.0), (400, 1.0)], "clip": [(0, 3.0), (400, 2.5)]}
    fig = panels_figure([("loss", series), ("probe", {"genlip": [(400, 0.4)]}), ("empty", {})], "samples seen")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["genlip", "clip"]
    assert _legend_right_of_axes(fig, fig.legends[0], visible)
    assert visible[0].get_xlim()[0] <= 0  # counts start at zero


def test_images_are_rgb_arrays() -> None:
    for image in (line_plot({"a": [0.5, 0.1]}, percent_log=True), panels_plot([("p", {"a": [(0, 1.0)]})])):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and (image != 255).any()
    grid = image_grid([np.zeros((4, 4, 3), np.uint8)] * 5, columns=2, pad=1)
    assert grid.shape == (3 * 5 + 1, 2 * 5 + 1, 3)


def test_a_null_point_is_a_gap_like_nan() -> None:
    """`genlip compare` keeps curves in result.json, where the one JSON writer stores NaN as null."""
    series = {"genlip": [(0, 2.0), (200, None), (400, float("nan")), (600, 1.0)]}
    fig = panels_figure([("loss", series)], "samples seen")
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [0.0, 600.0] and list(line.get_ydata()) == [2.0, 1.0]
