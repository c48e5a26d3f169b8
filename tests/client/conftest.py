"""Fixtures shared by the client tests (the server fixtures come from tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest
from serverproc import start_server


@pytest.fixture(scope="session")
def launch_server():
    """The ``serverproc.start_server`` context manager, as a fixture."""
    return start_server


@pytest.fixture
def free_target() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def secured_token() -> str:
    """The bearer token the ``secured`` server requires."""
    return "s3cret-token"


@pytest.fixture(scope="session")
def secured(tmp_path_factory, small_pool_path, launch_server, secured_token):
    """A second server that requires the bearer token ``secured_token``."""
    tmp = tmp_path_factory.mktemp("secured")
    (tmp / "token").write_text(secured_token + "\n")
    with launch_server(tmp, "--pool", str(small_pool_path), "--token-file", str(tmp / "token")) as proc:
        yield proc
