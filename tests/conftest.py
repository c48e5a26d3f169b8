"""Shared fixtures: a real instahide-server process on loopback."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np
import pytest
from serverproc import ServerProcess, start_server


@pytest.fixture(scope="session")
def small_pool_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A small public pool (.npy, uint8 (64, 32, 32, 3)) so server start-up stays fast."""
    path = tmp_path_factory.mktemp("pool") / "pool.npy"
    rng = np.random.default_rng(7)
    np.save(path, rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, small_pool_path: pathlib.Path) -> Iterator[ServerProcess]:
    """One server shared by the session's integration tests (CPU, small pool, no auth)."""
    with start_server(tmp_path_factory.mktemp("server"), "--pool", str(small_pool_path)) as proc:
        yield proc
