"""Start-up without a pool, and the SIGTERM drain."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from instahide_client.instahide.v1 import transform_pb2_grpc
from server_testlib import channel, config, encode_all, encoded, images, request, start_server

GRACE_SECONDS = 20


def _collect(watch, statuses: queue.Queue) -> None:
    try:
        for response in watch:
            statuses.put(response.status)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:  # cancelled by the test once it has seen enough
            raise


def test_sigterm_drains_open_streams_and_exits_zero(tmp_path, small_pool_path):
    args = ("--pool", str(small_pool_path), "--grace-seconds", str(GRACE_SECONDS), "--workers", "1",
            "--max-in-flight-per-stream", "2")
    with start_server(tmp_path, *args) as server, channel(server.target) as chan:
        # A health watcher sees SERVING now and NOT_SERVING once the drain starts.
        statuses: queue.Queue[int] = queue.Queue()
        watch = health_pb2_grpc.HealthStub(chan).Watch(health_pb2.HealthCheckRequest(service=""))
        threading.Thread(target=_collect, args=(watch, statuses), daemon=True).start()
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.SERVING

        second_half = threading.Event()

        def requests():
            for i in range(3):
                yield request(f"r{i}", images(512, seed=i), cfg=config() if i == 0 else None)
            second_half.wait(timeout=30)
            for i in range(3, 6):
                yield request(f"r{i}", images(512, seed=i))

        responses = transform_pb2_grpc.TransformServiceStub(chan).Encode(requests(), timeout=60)
        first = next(responses)
        server.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        second_half.set()  # the open stream keeps working during the grace period
        rest = list(responses)
        assert [r.request_id for r in [first, *rest]] == [f"r{i}" for i in range(6)]
        assert all(encoded(r).shape == (512, 32, 32, 3) for r in [first, *rest])
        assert responses.code() == grpc.StatusCode.OK
        assert server.process.wait(timeout=GRACE_SECONDS) == 0
        assert time.monotonic() - sent < GRACE_SECONDS
    log = server.log()
    assert "shutting down" in log and "Traceback" not in log


def test_bundled_default_pool(tmp_path):
    """No --pool: the bundled pool is built at start for --warm-shapes (cached under INSTAHIDE_CACHE_DIR)."""
    cache = tmp_path / "cache"
    with start_server(tmp_path, "--warm-shapes", "32x32x3", env={"INSTAHIDE_CACHE_DIR": str(cache)}) as server:
        deadline = time.monotonic() + 120
        while "public pool for images [32, 32, 3] ready" not in server.log():  # with no request sent
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        (response,) = encode_all(server.target, [request("d", images(16), cfg=config(return_keys=True))],
                                 timeout=180)
        assert encoded(response).shape == (16, 32, 32, 3)
        assert re.fullmatch(r"[0-9a-f]{64}", response.instahide_keys.pool_fingerprint)
    assert list(cache.glob("*.npy")), "the default pool was not cached"


def test_unusable_settings_exit_2(small_pool_path, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (["--port", str(port), "--pool", str(small_pool_path)],
                     ["--port", "0", "--pool", str(small_pool_path.parent / "missing.npy")]):
            result = subprocess.run([sys.executable, "-m", "instahide_server", "--device", "cpu",
                                     "--state-dir", str(tmp_path / "state"), *args],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
