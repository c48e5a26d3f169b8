"""What an attack returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AttackResult:
    """Attributes:
    recovered: (M, H, W, C) float32 in [-1, 1]: one image per private cluster (CPU).
    decryption: (E, H, W, C) float32: for each encoding, the recovery of its more heavily
        weighted cluster (the challenge's ``decryption`` array).
    members: (E, 2) int64 the two clusters of each encoding.
    coefficients: (E, 2) float32 their λ (read from the labels, or the keys' for the key-aware bound).
    stage_seconds: seconds spent per stage, in stage order.
    device: where the attack ran.
    public_coverage: share of the encodings in which the attack found a public image among what it holds
        (the photo-aware attack: crops of the photos); None for the attacks that look for none.
    """

    recovered: torch.Tensor
    decryption: torch.Tensor
    members: torch.Tensor
    coefficients: torch.Tensor
    stage_seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    public_coverage: float | None = None
