"""Start a real instahide-server process on loopback for a test, and stop it afterwards.

A plain module (not a conftest), so any test folder can ``from serverproc import start_server``: the
root conftest's folder, tests/, is on sys.path.
"""

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


@dataclass
class ServerProcess:
    """A running server: its ``target`` (host:port), process and log file, and its health-only port's
    target when it was started with one."""

    target: str
    process: subprocess.Popen
    log_path: pathlib.Path
    health_target: str | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def start_server(tmp_path: pathlib.Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 60.0, health_port: bool = False) -> Iterator[ServerProcess]:
    """Start ``python -m instahide_server`` on an ephemeral loopback port; stop it on exit.

    ``health_port=True`` also opens the plaintext health-only port (``--health-port 0``) and fills
    ``health_target``.
    """
    port_file = tmp_path / "port"
    flags = ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file), "--device", "cpu", *args]
    health_port_file = tmp_path / "health-port"
    if health_port:
        flags += ["--health-port", "0", "--health-port-file", str(health_port_file)]
    with run_server(flags, port_file=port_file, log_path=tmp_path / "server.log", env=env,
                    timeout=timeout) as server:
        if health_port:  # written before the main port file
            server.health_target = f"127.0.0.1:{int(health_port_file.read_text())}"
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
