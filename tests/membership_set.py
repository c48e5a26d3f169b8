"""A synthetic membership set shaped like a real audit's: a model's logits on N labelled examples, half of them
trained on (members), and K reference models on random halves. Each example has its own difficulty, so the
target's loss alone mixes hard members with easy non-members, and reference models (which see the same
difficulty) separate them: LiRA's point."""

from __future__ import annotations

import numpy as np


def membership_set(n: int = 400, classes: int = 5, references: int = 8, *, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    difficulty = rng.normal(0.0, 1.5, n)  # per example: how well any model fits it
    member = rng.random(n) < 0.5

    def logits(trained: np.ndarray, noise_seed: int) -> np.ndarray:
        noise = np.random.default_rng(noise_seed)
        out = noise.normal(0.0, 1.0, (n, classes))
        margin = 2.0 - difficulty + 1.2 * trained + noise.normal(0.0, 0.3, n)
        out[np.arange(n), labels] += margin
        return out.astype(np.float32)

    reference_member = rng.random((references, n)) < 0.5
    return {"outputs": logits(member, seed + 1), "labels": labels.astype(np.int64), "member": member,
            "reference_outputs": np.stack([logits(reference_member[k], seed + 2 + k) for k in range(references)]),
            "reference_member": reference_member}
