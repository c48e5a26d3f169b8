"""A PNG grid of originals over their recoveries, so a person can see what leaked.

Layout of ``image_grid`` for n pairs of (H, W, C) images, ``cols = min(n, columns)`` columns and
``rows = ceil(n / columns)`` double-rows, each image upscaled ``scale``× (nearest neighbour)::

    original 0   | gap | original 1   | ...      <- double-row 0, top
    gap
    recovery 0   | gap | recovery 1   | ...      <- double-row 0, bottom
    2 × gap
    original c   | ...                           <- double-row 1 ...

    height = rows * (2 * H * scale + gap) + (rows - 1) * 2 * gap
    width  = cols * W * scale + (cols - 1) * gap

Gaps and empty cells of the last double-row are white.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import tempfile
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.images import unit_range_to_uint8

BACKGROUND = 255


def _as_array(images: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise InvalidInputError(f"expected a torch.Tensor or numpy.ndarray, got {type(images).__name__}", field=name)
    if images.dtype.kind not in "fiub":
        raise InvalidInputError(f"expected real values, got dtype {images.dtype}", field=f"{name}.dtype")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InvalidInputError(f"expected shape (n, H, W, C) with C in (1, 3), got {images.shape}",
                                field=f"{name}.shape")
    return images


def _to_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """[-1, 1] (clipped; NaN as -1) → uint8 RGB, (n, H, W, 3)."""
    out = unit_range_to_uint8(images)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def _positive_int(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"must be an int >= {minimum}, got {value!r}", field=name)


def image_grid(top: torch.Tensor | np.ndarray, bottom: torch.Tensor | np.ndarray, *, columns: int = 10,
               scale: int = 4, gap: int = 2, title: str = "", captions: Sequence[str] = ()) -> np.ndarray:
    """Lay out pairs as originals (``top``) over recoveries (``bottom``), column by column.

    Args:
        top: (n, H, W, C) images in [-1, 1], C in (1, 3); values outside are clipped.
        bottom: (n, H, W, C) images shown under their ``top`` counterparts.
        columns: pairs per double-row; more pairs wrap into further double-rows.
        scale: nearest-neighbour upscaling factor.
        gap: white pixels between images (twice that between double-rows).
        title: a line of text above the grid (none when empty).
        captions: a short text under each recovery (e.g. its SSIM); none when empty, else one per pair.

    Returns:
        uint8 RGB image, shape (rows * (2*H*scale + gap) + (rows-1) * 2*gap, cols*W*scale + (cols-1)*gap, 3).

    Raises:
        ValueError: n < 1, top and bottom shapes differ, bad shapes/dtypes, columns or scale < 1, gap < 0.

    Examples:
        >>> image_grid(np.zeros((3, 8, 8, 1)), np.ones((3, 8, 8, 1)), columns=2, scale=2).shape
        (72, 34, 3)
    """
    top_a, bottom_a = _as_array(top, "top"), _as_array(bottom, "bottom")
    if top_a.shape != bottom_a.shape:
        raise InvalidInputError(f"shapes differ: top {top_a.shape}, bottom {bottom_a.shape}", field="bottom.shape")
    n, h, w, _ = top_a.shape
    if n < 1:
        raise InvalidInputError("expected at least one pair, got n = 0", field="top.shape")
    _positive_int(columns, "columns", 1)
    _positive_int(scale, "scale", 1)
    _positive_int(gap, "gap", 0)
    cols, rows = min(n, columns), math.ceil(n / columns)
    sh, sw = h * scale, w * scale
    canvas = np.full((rows * (2 * sh + gap) + (rows - 1) * 2 * gap, cols * sw + (cols - 1) * gap, 3),
                     BACKGROUND, dtype=np.uint8)
    tops, bottoms = _to_uint8_rgb(top_a), _to_uint8_rgb(bottom_a)
    for i in range(n):
        r, c = divmod(i, columns)
        y0, x0 = r * (2 * sh + 3 * gap), c * (sw + gap)
        canvas[y0:y0 + sh, x0:x0 + sw] = tops[i].repeat(scale, axis=0).repeat(scale, axis=1)
        y1 = y0 + sh + gap
        canvas[y1:y1 + sh, x0:x0 + sw] = bottoms[i].repeat(scale, axis=0).repeat(scale, axis=1)
    if captions:
        if len(captions) != n:
            raise InvalidInputError(f"expected one caption per pair ({n}), got {len(captions)}", field="captions")
        canvas = _with_captions(canvas, captions, columns=columns, pair_height=2 * sh + 3 * gap, tile_width=sw + gap)
    return _with_title(canvas, title) if title else canvas


TEXT_HEIGHT = 16  # pixels of one caption line
_FONT, _FONT_SCALE, _INK = cv2.FONT_HERSHEY_SIMPLEX, 0.4, (40, 40, 40)


def _with_captions(canvas: np.ndarray, captions: Sequence[str], *, columns: int, pair_height: int,
                   tile_width: int) -> np.ndarray:
    """A caption line inserted under each double-row, each caption under its column."""
    rows = math.ceil(len(captions) / columns)
    parts = []
    for row in range(rows):
        parts.append(canvas[row * pair_height:(row + 1) * pair_height])
        line = np.full((TEXT_HEIGHT, canvas.shape[1], 3), BACKGROUND, dtype=np.uint8)
        for column, text in enumerate(captions[row * columns:(row + 1) * columns]):
            cv2.putText(line, text, (column * tile_width + 2, TEXT_HEIGHT - 4), _FONT, _FONT_SCALE, _INK, 1,
                        cv2.LINE_AA)
        parts.append(line)
    return np.ascontiguousarray(np.concatenate(parts)[:canvas.shape[0] + rows * TEXT_HEIGHT])


def _with_title(canvas: np.ndarray, title: str) -> np.ndarray:
    line = np.full((TEXT_HEIGHT + 4, canvas.shape[1], 3), BACKGROUND, dtype=np.uint8)
    cv2.putText(line, title, (2, TEXT_HEIGHT - 2), _FONT, _FONT_SCALE, _INK, 1, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([line, canvas]))


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInputError(f"expected a uint8 numpy array, got {got}", field="image")
    if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise InvalidInputError(f"expected shape (H, W, 3) with H, W >= 1, got {image.shape}", field="image.shape")
    return np.ascontiguousarray(image[..., ::-1])  # RGB -> BGR for cv2


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (H, W, 3), e.g. to carry a grid in a message.

    Raises:
        ValueError: not a uint8 (H, W, 3) array.
        RuntimeError: OpenCV failed to encode.

    Examples:
        >>> encode_png(np.zeros((2, 2, 3), np.uint8))[:4]
        b'\\x89PNG'
    """
    ok, buf = cv2.imencode(".png", _check_rgb(image))
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for an image of shape {image.shape}")
    return buf.tobytes()


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 image (H, W, 3) to ``path`` as PNG, atomically (temporary file + os.replace).

    Raises:
        ValueError: not a uint8 (H, W, 3) array.
        RuntimeError: OpenCV failed to encode.
        OSError: the file could not be written.
    """
    data = encode_png(image)
    target = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make reports unreadable to others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
