"""Line plots as RGB arrays, drawn with OpenCV (no plotting library in the service's dependencies).

Audits draw their curves (SSIM against the pairs an attacker holds, against the noise; ROC curves, also on log-log
axes) with ``line_plot`` and ship them as PNG (``grid.encode_png``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from instahide_ops.errors import InvalidInputError

WIDTH, HEIGHT = 480, 300
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 48, 12, 26, 40
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
_INK, _GRID = (40, 40, 40), (225, 225, 225)


def line_plot(series: dict[str, Sequence[tuple[float, float]]], *, title: str, x_label: str, y_label: str,
              y_range: tuple[float, float] = (0.0, 1.0), log2_x: bool = False,
              x_range: tuple[float, float] | None = None, log_x: bool = False, log_y: bool = False,
              x_ticks: Sequence[float] | None = None, markers: bool = True) -> np.ndarray:
    """One panel: each named series of (x, y) points as a line (with markers), a legend, labelled axes.

    Args:
        series: name -> points (sorted by x here); every point's y is clipped to ``y_range``.
        y_range: the y axis's ends.
        log2_x: a base-2 logarithmic x axis (x must be positive), ticks at the points' x.
        x_range: the x axis's ends, every point's x clipped to them; None: the points' smallest and largest x.
        log_x, log_y: base-10 logarithmic axes (their ranges must be positive; with ``x_range`` given, x at or
            below 0 is clipped to its low end), ticks at the powers of ten.
        x_ticks: where to mark the x axis; None: at the points' x (at the powers of ten with ``log_x``).
        markers: a dot at every point (leave out for dense curves).

    Returns:
        (HEIGHT, WIDTH, 3) uint8 RGB.

    Raises:
        InvalidInputError: no points, or a non-positive x (or range) on a log axis.
    """
    points = [p for values in series.values() for p in values]
    if not points:
        raise InvalidInputError("nothing to plot", field="series")
    x_low, x_high = x_range if x_range is not None else (min(x for x, _ in points), max(x for x, _ in points))
    if (log2_x or log_x) and x_low <= 0:
        raise InvalidInputError("a log axis needs positive x", field="series")
    if log_y and y_range[0] <= 0:
        raise InvalidInputError("a log axis needs a positive y range", field="y_range")
    to_x = math.log2 if log2_x else math.log10 if log_x else float
    to_y = math.log10 if log_y else float
    low, high = to_x(x_low), to_x(x_high)
    if high == low:
        low, high = low - 1, high + 1
    left, right = _MARGIN_LEFT, WIDTH - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, HEIGHT - _MARGIN_BOTTOM
    y_low, y_high = to_y(y_range[0]), to_y(y_range[1])

    def pixel(x: float, y: float) -> tuple[int, int]:
        x, y = min(max(x, x_low), x_high), min(max(y, y_range[0]), y_range[1])
        return (round(left + (to_x(x) - low) / (high - low) * (right - left)),
                round(bottom - (to_y(y) - y_low) / (y_high - y_low) * (bottom - top)))

    canvas = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    y_ticks = (_decades(*y_range) if log_y else [y_low + step * (y_high - y_low) / 5 for step in range(6)])
    for y in y_ticks:  # horizontal grid lines and y ticks
        _, row = pixel(x_low, y)
        cv2.line(canvas, (left, row), (right, row), _GRID, 1)
        cv2.putText(canvas, f"{y:g}" if log_y else f"{y:.1f}", (4, row + 4), _FONT, 0.35, _INK, 1, cv2.LINE_AA)
    if x_ticks is None:
        x_ticks = _decades(x_low, x_high) if log_x else sorted({x for x, _ in points})
    for x in x_ticks:
        column, _ = pixel(x, y_range[0])
        cv2.line(canvas, (column, bottom), (column, bottom + 4), _INK, 1)
        cv2.putText(canvas, f"{x:g}", (column - 8, bottom + 16), _FONT, 0.35, _INK, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (right, bottom), _INK, 1)
    cv2.putText(canvas, title, (left, 17), _FONT, 0.45, _INK, 1, cv2.LINE_AA)
    cv2.putText(canvas, x_label, ((left + right) // 2 - 4 * len(x_label), HEIGHT - 8), _FONT, 0.4, _INK, 1,
                cv2.LINE_AA)
    cv2.putText(canvas, y_label, (4, 17), _FONT, 0.4, _INK, 1, cv2.LINE_AA)
    for index, (name, values) in enumerate(series.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        line = [pixel(x, y) for x, y in sorted(values)]
        for a, b in itertools.pairwise(line):
            cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        for point in line if markers else ():
            cv2.circle(canvas, point, 3, colour, -1, cv2.LINE_AA)
        legend_row = bottom - 10 - 14 * (len(series) - 1 - index)
        cv2.line(canvas, (right - 130, legend_row - 4), (right - 112, legend_row - 4), colour, 2)
        cv2.putText(canvas, name[:18], (right - 108, legend_row), _FONT, 0.35, _INK, 1, cv2.LINE_AA)
    return canvas


def _decades(low: float, high: float) -> list[float]:
    """The powers of ten from ``low`` to ``high`` (both positive)."""
    return [10.0 ** e for e in range(math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9) + 1)]
