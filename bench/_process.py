"""Start a server process on loopback that writes its bound port to a file, stop it, and read a process's
resident memory: shared by the benches.

Benches run as scripts (``python bench/x.py``), so their folder is on sys.path and ``from _process import``
finds this module.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time

START_SECONDS = 120.0


def start_process(cmd: list[str], port_file: pathlib.Path, log: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """Run ``cmd`` (output to ``log``) until it writes ``port_file``; returns it and ``127.0.0.1:PORT``."""
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_SECONDS
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd[:3]} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


def start_instahide_server(folder: pathlib.Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """``python -m instahide_server`` on a free loopback port with ``flags``; its log is ``folder/server.log``."""
    port_file = folder / "server.port"
    cmd = [sys.executable, "-m", "instahide_server", "--host", "127.0.0.1", "--port", "0",
           "--port-file", str(port_file), *flags]
    return start_process(cmd, port_file, folder / "server.log")


def stop_process(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM, and SIGKILL when it has not exited after ``timeout`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of process ``pid`` in MiB (VmRSS); None without a pid or once it has gone."""
    if pid is None:
        return None
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
