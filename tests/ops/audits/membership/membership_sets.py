"""Synthetic membership sets whose leakage is known by construction.

Every model's logit-scaled confidence log p_y - log sum_{i != y} p_i on an example is its own difficulty, plus
``boost`` when the model trained on it, plus noise. The difficulty (spread ``difficulty`` across examples) hides
membership from a threshold shared by all examples; reference models that share it reveal it, so LiRA wins at low
FPR. Members have the higher label probability, so every attack should beat chance.
"""

from __future__ import annotations

import numpy as np

from instahide_ops.audits.membership import MembershipData


def logits_with_confidence(scaled: np.ndarray, labels: np.ndarray, classes: int, rng: np.random.Generator
                           ) -> np.ndarray:
    """(N, C[, h, w]) logits whose logit-scaled confidence at ``labels`` is ``scaled`` ((N,) or (N, h, w))."""
    out = rng.normal(0.0, 0.5, (len(labels), classes, *labels.shape[1:]))
    at_label = np.expand_dims(labels, 1) == np.arange(classes).reshape(1, -1, *([1] * (labels.ndim - 1)))
    others = np.log(np.where(at_label, 0.0, np.exp(out)).sum(axis=1))
    return np.where(at_label, np.expand_dims(scaled + others, 1), out)


def overfit_set(n: int = 2000, *, classes: int = 10, references: int = 8, boost: float = 1.0,
                difficulty: float = 2.0, noise: float = 0.3, seed: int = 0) -> MembershipData:
    """(N, C) logits of a target and ``references`` reference models (each trained on a random half)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    member = rng.random(n) < 0.5
    hardness = rng.normal(0.0, difficulty, n)
    reference_member = rng.random((references, n)) < 0.5

    def logits(trained: np.ndarray) -> np.ndarray:
        return logits_with_confidence(hardness + boost * trained + rng.normal(0.0, noise, n), labels, classes, rng)

    return MembershipData(logits(member), labels, member, np.stack([logits(m) for m in reference_member]),
                          reference_member)


def overfit_segmentation_set(n: int = 80, *, classes: int = 4, size: int = 12, references: int = 8,
                             boost: float = 1.0, difficulty: float = 2.0, noise: float = 0.3,
                             ignored: float = 0.1, seed: int = 0) -> MembershipData:
    """(N, C, size, size) logits with (N, size, size) label maps (``ignored`` of the pixels 255)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, (n, size, size))
    labels[rng.random(labels.shape) < ignored] = 255
    member = np.arange(n) % 2 == 0
    hardness = rng.normal(0.0, difficulty, (n, 1, 1))
    reference_member = rng.random((references, n)) < 0.5

    def logits(trained: np.ndarray) -> np.ndarray:
        scaled = hardness + boost * trained[:, None, None] + rng.normal(0.0, noise, labels.shape)
        return logits_with_confidence(scaled, np.where(labels == 255, 0, labels), classes, rng).astype(np.float32)

    return MembershipData(logits(member), labels, member, np.stack([logits(m) for m in reference_member]),
                          reference_member)
