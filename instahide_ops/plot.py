"""Line plots as RGB arrays, drawn with OpenCV (no plotting library in the service's dependencies).

Audits draw their curves (SSIM against the pairs an attacker holds, against the noise) with ``line_plot`` and
ship them as PNG (``grid.encode_png``).
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
              y_range: tuple[float, float] = (0.0, 1.0), log2_x: bool = False) -> np.ndarray:
    """One panel: each named series of (x, y) points as a line with markers, a legend, labelled axes.

    Args:
        series: name -> points (sorted by x here); every point's y is clipped to ``y_range``.
        log2_x: a base-2 logarithmic x axis (x must be positive), ticks at the points' x.

    Returns:
        (HEIGHT, WIDTH, 3) uint8 RGB.

    Raises:
        InvalidInputError: no points, or a non-positive x on a log axis.
    """
    points = [p for values in series.values() for p in values]
    if not points:
        raise InvalidInputError("nothing to plot", field="series")
    if log2_x and min(x for x, _ in points) <= 0:
        raise InvalidInputError("a log axis needs positive x", field="series")
    xs = sorted({x for x, _ in points})
    to_axis = (lambda x: math.log2(x)) if log2_x else float
    low, high = to_axis(xs[0]), to_axis(xs[-1])
    if high == low:
        low, high = low - 1, high + 1
    left, right = _MARGIN_LEFT, WIDTH - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, HEIGHT - _MARGIN_BOTTOM
    y_low, y_high = y_range

    def pixel(x: float, y: float) -> tuple[int, int]:
        y = min(max(y, y_low), y_high)
        return (round(left + (to_axis(x) - low) / (high - low) * (right - left)),
                round(bottom - (y - y_low) / (y_high - y_low) * (bottom - top)))

    canvas = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    for step in range(6):  # horizontal grid lines and y ticks
        y = y_low + step * (y_high - y_low) / 5
        _, row = pixel(xs[0], y)
        cv2.line(canvas, (left, row), (right, row), _GRID, 1)
        cv2.putText(canvas, f"{y:.1f}", (4, row + 4), _FONT, 0.35, _INK, 1, cv2.LINE_AA)
    for x in xs:  # x ticks at the measured points
        column, _ = pixel(x, y_low)
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
        for point in line:
            cv2.circle(canvas, point, 3, colour, -1, cv2.LINE_AA)
        legend_row = bottom - 10 - 14 * (len(series) - 1 - index)
        cv2.line(canvas, (right - 130, legend_row - 4), (right - 112, legend_row - 4), colour, 2)
        cv2.putText(canvas, name[:18], (right - 108, legend_row), _FONT, 0.35, _INK, 1, cv2.LINE_AA)
    return canvas
