"""Two bundled photos, a small pool cut from them, and 20 × 20 private images mixed with it: the set of the
tests whose attackers hold the photos (the photo-aware attack) or the key's mapping of the pool.

The pool (256 images) is smaller than the set's 1,600 public slots, so each public is mixed into about 6
encodings: the photo-aware attack can find them and the key-aware bound can solve them.
"""

from __future__ import annotations

import numpy as np

from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.instahide.challenge import (
    ChallengeSet,
    GroundTruth,
    build_challenge,
    bundled_private_images,
)
from instahide_ops.transforms.instahide.pool import PublicPool, build_pool

IMAGES, PER_IMAGE = 20, 20
SCALES = (64, 96)  # two scales keep the dictionary small: about 145,000 windows of two photos


def two_photos() -> list[np.ndarray]:
    return list(bundled_sources(("china", "flower")).values())


def pool_from(photos: list[np.ndarray]) -> PublicPool:
    return PublicPool.from_array(build_pool(photos, count=256, scales=SCALES, seed=3))


def challenge_over(pool: PublicPool) -> tuple[ChallengeSet, GroundTruth]:
    privates, classes = bundled_private_images(IMAGES)
    return build_challenge(privates, classes, encodings_per_image=PER_IMAGE, seed=0, pool=pool)
