"""Checks every image transform makes of its input, so that each family refuses bad input in the same words."""

from __future__ import annotations

import torch

from instahide_ops.errors import InvalidInputError


def check_images(images: torch.Tensor) -> None:
    """(N, H, W, C) uint8, or float in [-1, 1]; InvalidInputError naming images.shape, .dtype or .content."""
    if images.ndim != 4:
        raise InvalidInputError(
            f"expected rank 4 (N, H, W, C), got shape {list(images.shape)}", field="images.shape"
        )
    if images.numel() == 0:
        raise InvalidInputError(f"empty batch: shape {list(images.shape)}", field="images.shape")
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise InvalidInputError(f"expected uint8 or floating point, got {images.dtype}", field="images.dtype")
    peak = images.abs().amax()
    if not bool(peak <= 1.0):  # NaN compares false too
        if not bool(torch.isfinite(images).all()):
            raise InvalidInputError("contains NaN or Inf", field="images.content")
        raise InvalidInputError(f"float images must lie in [-1, 1], max |x| = {float(peak):.4g}",
                                field="images.content")


def check_labels(labels: torch.Tensor, num_images: int, num_classes: int) -> None:
    """One integer class in [0, num_classes) per image; InvalidInputError naming ``labels`` otherwise."""
    if num_classes < 1:
        raise InvalidInputError(f"must be at least 1, got {num_classes}", field="config.num_classes")
    if labels.ndim != 1 or labels.shape[0] != num_images:
        raise InvalidInputError(
            f"expected {num_images} labels (one per image), got shape {list(labels.shape)}", field="labels"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise InvalidInputError(f"expected integer labels, got {labels.dtype}", field="labels")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise InvalidInputError(
            f"labels must lie in [0, num_classes={num_classes}), got range [{low}, {high}]", field="labels"
        )
