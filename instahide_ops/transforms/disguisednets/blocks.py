"""Cutting (N, H, W, C) images into r×s blocks and moving whole blocks: functions over tensors.

Blocks are numbered row-major over the image's grid of (H / r) × (W / s) positions. A block tensor is
(N, P, C, r, s): image, position, channel, then the block's rows and columns, so a per-position matrix
multiplies the last two axes of every image and channel at once.
"""

from __future__ import annotations

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
