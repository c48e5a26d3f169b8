"""A stand-in for ``instahide_ops.transforms.defenses`` (written on another branch) with the planned signatures,
installed only where that package is missing, so the audit's defense path is tested before the branches merge.
Only what the tests use: argmax and gauss, accuracy and a plain mIoU."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Defense:
    kind: str
    value: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "argmax" else f"{self.kind}:{self.value:g}"


def parse_defense(text: str) -> Defense:
    kind, _, value = text.partition(":")
    return Defense(kind, float(value) if value else 0.0)


def apply_defense(probabilities: torch.Tensor, defense: Defense, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    if defense.kind == "argmax":
        return torch.zeros_like(probabilities).scatter_(1, probabilities.argmax(1, keepdim=True), 1.0)
    noise = torch.randn(probabilities.shape, generator=generator, dtype=probabilities.dtype)
    noisy = (probabilities + defense.value * noise).clamp_min(1e-6)
    return noisy / noisy.sum(1, keepdim=True)


def utility(probabilities: np.ndarray, labels: np.ndarray, *, ignore_index: int = 255) -> tuple[str, float]:
    predicted = probabilities.argmax(1)
    if probabilities.ndim == 2:
        return "accuracy", float(np.mean(predicted == labels))
    kept = labels != ignore_index
    ious = [((predicted == c) & (labels == c) & kept).sum() / ((predicted == c) | (labels == c))[kept].sum()
            for c in range(probabilities.shape[1]) if ((predicted == c) | (labels == c))[kept].any()]
    return "miou", float(np.mean(ious))


def install_if_missing() -> None:
    try:
        import instahide_ops.transforms.defenses  # noqa: F401
    except ModuleNotFoundError:
        module = types.ModuleType("instahide_ops.transforms.defenses")
        module.__dict__.update(Defense=Defense, parse_defense=parse_defense, apply_defense=apply_defense,
                               utility=utility)
        sys.modules[module.__name__] = module
