"""Shared fixtures for the instahide_ops tests."""

from __future__ import annotations

import pytest
from photo_set import challenge_over, pool_from, two_photos

from instahide_ops.audits.reconstruction.instahide import pool_aware, pursuit


@pytest.fixture
def pool_grams(monkeypatch) -> list[tuple[int, bool]]:
    """(working bytes, whether the matrix is stored) of every ``PoolGram`` the pool-aware attack builds."""
    built: list[tuple[int, bool]] = []

    class RecordedGram(pursuit.PoolGram):
        def __init__(self, pool, **kwargs):
            super().__init__(pool, **kwargs)
            built.append((self.working_bytes, self.stored))

    monkeypatch.setattr(pool_aware, "PoolGram", RecordedGram)
    return built


@pytest.fixture(scope="session")
def photos():
    """The two bundled photos of ``photo_set``."""
    return two_photos()


@pytest.fixture(scope="session")
def crop_pool(photos):
    """``photo_set``'s pool of 256 crops of ``photos``."""
    return pool_from(photos)


@pytest.fixture(scope="session")
def crop_challenge(crop_pool):
    """``photo_set``'s 20 × 20 set mixed with ``crop_pool``: (challenge, ground truth)."""
    return challenge_over(crop_pool)
