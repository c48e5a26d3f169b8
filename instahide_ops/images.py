"""Image helpers every family shares: the [-1, 1] scale, resizing, grey levels and image files.

Resizing and grey conversion are integer arithmetic, so they give the same bytes on every CPU (OpenCV's
SIMD paths, chosen per instruction set, may round differently): a public pool cut on one node type is the
pool cut on any other.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from instahide_ops.errors import InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# ITU-R BT.601 luma in 14-bit fixed point, the weights OpenCV's RGB2GRAY uses for uint8 images.
_GREY_WEIGHTS = (4899, 9617, 1868)
_GREY_SHIFT = 14


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W) uint8 luma (BT.601), exact on every CPU; a (H, W) image is returned as it is.

    Raises:
        InvalidInputError: not uint8 (H, W) or (H, W, 3).
    """
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise InvalidInputError(f"expected uint8 (H, W) or (H, W, 3), got {image.dtype} {list(image.shape)}",
                                field="image")
    if image.ndim == 2:
        return image
    red, green, blue = (image[..., c].astype(np.int32) for c in range(3))
    weighted = _GREY_WEIGHTS[0] * red + _GREY_WEIGHTS[1] * green + _GREY_WEIGHTS[2] * blue
    return ((weighted + (1 << (_GREY_SHIFT - 1))) >> _GREY_SHIFT).astype(np.uint8)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize one uint8 (H, W[, C]) image: area averaging where an axis shrinks, linear where it grows.

    What ``cv2.resize`` does with ``INTER_AREA`` / ``INTER_LINEAR`` (pixel centres at half-pixel offsets), but
    with integer weights and one rounding at the end, so every CPU gives the same bytes.

    Raises:
        InvalidInputError: not uint8 of rank 2 or 3, or a size below 1.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InvalidInputError(f"expected uint8 (H, W) or (H, W, C), got {image.dtype} {list(image.shape)}",
                                field="image")
    if height < 1 or width < 1:
        raise InvalidInputError(f"size must be positive, got {height}x{width}", field="size")
    if image.shape[:2] == (height, width):
        return image.copy()
    rows, row_scale = _resampled(image.astype(np.int64), height, axis=0)
    both, col_scale = _resampled(rows, width, axis=1)
    scale = row_scale * col_scale
    return ((both + scale // 2) // scale).astype(np.uint8)


def _resampled(values: np.ndarray, size: int, *, axis: int) -> tuple[np.ndarray, int]:
    """``values`` resampled to ``size`` along ``axis``, times the returned integer scale (not yet divided)."""
    source = values.shape[axis]
    if source % size == 0:  # shrinking by a whole factor: the sums of blocks (integer sums are exact)
        factor = source // size
        blocks = values.reshape(*values.shape[:axis], size, factor, *values.shape[axis + 1:])
        return blocks.sum(axis=axis + 1), factor
    taps, weights, scale = (_area_taps if size <= source else _linear_taps)(source, size)
    out = np.zeros((*values.shape[:axis], size, *values.shape[axis + 1:]), dtype=np.int64)
    shape = [1] * values.ndim
    shape[axis] = size
    for tap in range(taps.shape[1]):  # a fixed order of integer sums: exact
        out += weights[:, tap].reshape(shape) * np.take(values, taps[:, tap], axis=axis)
    return out, scale


def _area_taps(source: int, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Output i covers [i·source, (i+1)·source) and input j covers [j·size, (j+1)·size): weights are overlaps."""
    width = -(-source // size) + 1  # most inputs one output can overlap
    first = np.arange(size) * source // size
    taps = np.minimum(first[:, None] + np.arange(width)[None, :], source - 1)
    low = np.maximum(np.arange(size)[:, None] * source, taps * size)
    high = np.minimum((np.arange(size)[:, None] + 1) * source, (taps + 1) * size)
    weights = np.maximum(high - low, 0)
    weights[:, 1:] *= taps[:, 1:] != taps[:, :-1]  # a tap clamped onto the last input counts once
    return taps, weights, source


def _linear_taps(source: int, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Input position (i + ½)·source/size − ½, in units of 1/(2·size); clamped at both ends."""
    position = np.maximum((2 * np.arange(size) + 1) * source - size, 0)
    left, fraction = np.divmod(position, 2 * size)
    left = np.minimum(left, source - 1)
    right = np.minimum(left + 1, source - 1)
    weights = np.stack([2 * size - fraction, fraction], axis=1)
    return np.stack([left, right], axis=1), weights, 2 * size


def image_files(folder: Path) -> list[Path]:
    """The folder's image files (``IMAGE_SUFFIXES``, any case), in name order; sub-folders are not entered."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_rgb(file: Path, *, field: str) -> np.ndarray:
    """One image file as (H, W, 3) uint8 RGB; InvalidInputError naming ``field`` when it cannot be read."""
    bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidInputError(f"cannot read image {str(file)!r}", field=field)
    return np.ascontiguousarray(bgr[..., ::-1])


def to_unit_range(t: torch.Tensor) -> torch.Tensor:
    """Map images to float32 in [-1, 1]; private images and pools go through this one expression.

    Args:
        t: uint8 in [0, 255] (mapped as ``x / 127.5 - 1`` in float32), or floating (already in [-1, 1]).

    Returns:
        float32 tensor of the same shape on the same device (``t`` itself when it is float32).
    """
    if t.dtype == torch.uint8:
        return t.float().div_(127.5).sub_(1.0)
    if t.is_floating_point():
        return t.to(torch.float32)
    raise InvalidInputError(f"expected uint8 or floating images, got {t.dtype}", field="images.dtype")


def unit_range_array(images: np.ndarray) -> np.ndarray:
    """``to_unit_range`` for numpy arrays: uint8 → float32 in [-1, 1]; floating → float32 as it is."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        # torch warns on read-only arrays (decoded request bytes are); the uint8 copy is the cheap side
        return to_unit_range(torch.from_numpy(images if images.flags.writeable else images.copy())).numpy()
    return images.astype(np.float32)


def unit_range_to_uint8(images: np.ndarray) -> np.ndarray:
    """The inverse map: [-1, 1] → uint8 (rounded; values outside are clipped, NaN as -1)."""
    values = np.nan_to_num(np.asarray(images, dtype=np.float64), nan=-1.0)
    return np.rint((np.clip(values, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
