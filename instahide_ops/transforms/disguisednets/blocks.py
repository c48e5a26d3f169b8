"""Cutting (N, H, W, C) images into r×s blocks and moving whole blocks: functions over tensors.

Blocks are numbered row-major over the image's grid of (H / r) × (W / s) positions. A block tensor is
(N, P, C, r, s): image, position, channel, then the block's rows and columns, so a per-position matrix
multiplies the last two axes of every image and channel at once.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def to_blocks(images: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """(N, H, W, C) → (N, P, C, r, s) with P = (H / r)·(W / s); r and s must divide H and W."""
    n, h, w, c = images.shape
    r, s = block
    grid = images.reshape(n, h // r, r, w // s, s, c)
    return grid.permute(0, 1, 3, 5, 2, 4).reshape(n, (h // r) * (w // s), c, r, s)


def from_blocks(blocks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``to_blocks``: (N, P, C, r, s) → (N, H, W, C)."""
    n, _, c, r, s = blocks.shape
    grid = blocks.reshape(n, height // r, width // s, c, r, s)
    return grid.permute(0, 1, 4, 2, 5, 3).reshape(n, height, width, c)


# -- moving blocks in the image's own layout ------------------------------------------------------------------------
#
# In (N, H, W, C) memory a block is r runs of s·C contiguous elements, one per block row ("chunks"). Moving blocks
# is therefore one ``index_select`` over the (N, H·W/s, s·C) chunk view: a few hundred short copies per image, far
# cheaper than gathering element by element, and no layout change before or after.


@functools.lru_cache(maxsize=64)
def _chunk_sources(image_shape: tuple[int, int, int], block: tuple[int, int], permutation: bytes) -> np.ndarray:
    h, w, _ = image_shape
    r, s = block
    columns = w // s
    moved = np.frombuffer(permutation, dtype=np.int64)
    source = np.argsort(moved)  # the block that lands at each position
    rows = np.arange(h).reshape(h // r, r)  # image rows of each block row
    out = np.empty((h, columns), dtype=np.int64)
    for q, p in enumerate(source):
        (qy, qx), (py, px) = divmod(q, columns), divmod(int(p), columns)
        out[rows[qy], qx] = rows[py] * columns + px
    return out.reshape(-1)


def move_blocks(images: torch.Tensor, block: tuple[int, int], permutation: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) → the same with the block at position i moved to position ``permutation[i]``."""
    n, h, w, c = images.shape
    r, s = block
    sources = _chunk_sources((h, w, c), (r, s), np.ascontiguousarray(permutation, dtype=np.int64).tobytes())
    chunks = images.reshape(n, h * (w // s), s * c)
    return chunks.index_select(1, torch.from_numpy(sources).to(images.device)).reshape(n, h, w, c)
