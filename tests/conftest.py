"""Shared fixtures: a real instahide-server process on loopback."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class ServerProcess:
    """A running server: its ``target`` (host:port), process and log file."""

    target: str
    process: subprocess.Popen
    log_path: pathlib.Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def small_pool_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A small public pool (.npy, uint8 (64, 32, 32, 3)) so server start-up stays fast."""
    path = tmp_path_factory.mktemp("pool") / "pool.npy"
    rng = np.random.default_rng(7)
    np.save(path, rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8))
    return path


@contextlib.contextmanager
def start_server(tmp_path: pathlib.Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> Iterator[ServerProcess]:
    """Start ``python -m instahide_server`` on an ephemeral loopback port; stop it on exit."""
    port_file = tmp_path / "port"
    flags = ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--device", "cpu", *args]
    with run_server(flags, port_file=port_file, log_path=tmp_path / "server.log", env=env,
                    timeout=timeout) as server:
        yield server


@contextlib.contextmanager
def run_server(flags: list[str], *, port_file: pathlib.Path, log_path: pathlib.Path,
               env: dict[str, str] | None = None, host: str = "127.0.0.1",
               timeout: float = 60.0) -> Iterator[ServerProcess]:
    """Run ``python -m instahide_server FLAGS`` until it writes ``port_file``; SIGTERM it on exit."""
    cmd = [sys.executable, "-m", "instahide_server", *flags]
    # Audits are stored beside the log and /metrics stays off, unless a test asks otherwise.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "INSTAHIDE_STATE_DIR": str(log_path.parent / "state"),
                "INSTAHIDE_METRICS_PORT": "0", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    try:
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start in {timeout}s:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield ServerProcess(f"{host}:{int(port_file.read_text())}", proc, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, small_pool_path: pathlib.Path) -> Iterator[ServerProcess]:
    """One server shared by the session's integration tests (CPU, small pool, no auth)."""
    with start_server(tmp_path_factory.mktemp("server"), "--pool", str(small_pool_path)) as proc:
        yield proc
