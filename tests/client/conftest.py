"""Fixtures shared by the client tests (the server fixtures come from tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(scope="session")
def launch_server(request):
    """tests/conftest.py's ``start_server`` context manager.

    Found through the plugin manager: non-package conftest modules all import as ``conftest``,
    so ``from conftest import start_server`` could pick up another folder's.
    """
    for plugin in request.config.pluginmanager.get_plugins():
        if callable(getattr(plugin, "start_server", None)) and hasattr(plugin, "ServerProcess"):
            return plugin.start_server
    raise LookupError("tests/conftest.py's start_server not found")


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
