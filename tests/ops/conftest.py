"""Shared fixtures for the instahide_ops tests."""

from __future__ import annotations

import pytest

from instahide_ops.attacks import pool_aware, pursuit


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
