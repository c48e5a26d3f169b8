"""Shared fixtures: real instahide-server processes on loopback (plaintext, TLS, mutual TLS)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np
import pytest
from certs import Pki, make_pki
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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with a server (SAN 127.0.0.1, localhost) and a client certificate, and an unrelated second CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_token() -> str:
    """The bearer token the ``tls_server`` requires."""
    return "tls-server-token"


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory, small_pool_path: pathlib.Path, pki: Pki,
               tls_token: str) -> Iterator[ServerProcess]:
    """A server with TLS (``pki.server``, signed by ``pki.ca``) that requires the bearer token ``tls_token``."""
    tmp = tmp_path_factory.mktemp("tls-server")
    (tmp / "token").write_text(tls_token + "\n")
    with start_server(tmp, "--pool", str(small_pool_path), "--token-file", str(tmp / "token"),
                      "--tls-cert-file", str(pki.server.cert_path),
                      "--tls-key-file", str(pki.server.key_path)) as proc:
        yield proc


@pytest.fixture(scope="session")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, small_pool_path: pathlib.Path,
                pki: Pki) -> Iterator[ServerProcess]:
    """Mutual TLS: clients need a certificate signed by ``pki.ca``; no token; a plaintext health-only port."""
    with start_server(tmp_path_factory.mktemp("mtls-server"), "--pool", str(small_pool_path),
                      "--tls-cert-file", str(pki.server.cert_path), "--tls-key-file", str(pki.server.key_path),
                      "--tls-client-ca-file", str(pki.ca.cert_path), health_port=True) as proc:
        yield proc
