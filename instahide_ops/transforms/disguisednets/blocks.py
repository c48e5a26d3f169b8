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


def permute_blocks(blocks: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Move the block at position i to position ``permutation[i]``, in every image."""
    out = torch.empty_like(blocks)
    out[:, permutation.to(blocks.device)] = blocks
    return out


def unpermute_blocks(blocks: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """The inverse of ``permute_blocks``: position ``permutation[i]`` goes back to i."""
    return blocks[:, permutation.to(blocks.device)]


# -- the same moves as gathers: one index_select each way, whatever the dtype or device ----------------------------
#
# A batch is disguised fastest as two gathers around the per-block work: image → blocks (``block_order``) and
# blocks → image with every block moved to its permuted position (``block_placement``). Each is one
# ``index_select`` over the flattened (H·W·C) axis, which copies once and keeps uint8 as uint8.


@functools.lru_cache(maxsize=64)
def _order(image_shape: tuple[int, int, int], block: tuple[int, int]) -> np.ndarray:
    h, w, c = image_shape
    flat = np.arange(h * w * c).reshape(1, h, w, c)
    return to_blocks(torch.from_numpy(flat), block).reshape(-1).numpy()


def block_order(image_shape: tuple[int, int, int], block: tuple[int, int]) -> np.ndarray:
    """(H·W·C,) int64: the flat (H, W, C) index of each element of the block layout (P, C, r, s) (cached: do not
    modify it)."""
    return _order(tuple(image_shape), tuple(block))


def block_placement(image_shape: tuple[int, int, int], block: tuple[int, int], permutation: np.ndarray) -> np.ndarray:
    """(H·W·C,) int64: for each element of the output image, the element of the block layout it takes when the
    block at position i moves to position ``permutation[i]``."""
    h, w, c = image_shape
    r, s = block
    per_block = c * r * s
    order = block_order(image_shape, block)
    source_block = np.argsort(permutation)  # the block that lands at each position
    within = np.arange(per_block)
    # Output element order[q * per_block + j] comes from block source_block[q], element j.
    placement = np.empty(h * w * c, dtype=np.int64)
    placement[order] = (source_block[:, None] * per_block + within[None, :]).reshape(-1)
    return placement


def gather(flat: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """``flat[:, index]`` for an (N, M) tensor: one copy, on its device."""
    return flat.index_select(1, torch.from_numpy(index).to(flat.device))
