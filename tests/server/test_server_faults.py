"""Faults on the Encode path over a real server process: clients that vanish, flood, or outlive a SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from instahide_client.instahide.v1 import transform_pb2, transform_pb2_grpc
from server_testlib import MIB, config, encode_all, encoded, images, metric, request, rss_mib, start_server

ENCODE = {"grpc_type": "bidi_stream", "grpc_service": "instahide.v1.TransformService", "grpc_method": "Encode"}
STREAMS = "instahide_encode_streams_in_flight"
BATCHES = "instahide_encode_batches_in_flight"
MAX_IN_FLIGHT = 2
# float32 responses of 1024 32×32×3 images (12 MiB each) fill a client's receive window after one or
# two, so a client that stops reading holds the server at its in-flight bound.
BIG_BATCH = 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * MIB), ("grpc.max_send_message_length", 64 * MIB)]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Producer:
    """Requests as fast as gRPC takes them, until ``stop``; counts what it handed over."""

    def __init__(self, batch: int) -> None:
        self._request = request("template", images(batch))
        self.pushed = 0
        self.stop = threading.Event()

    def __iter__(self) -> Iterator[transform_pb2.EncodeRequest]:
        while not self.stop.is_set():
            message = transform_pb2.EncodeRequest(request_id=f"r{self.pushed}", images=self._request.images,
                                                  labels=self._request.labels)
            if self.pushed == 0:
                message.config.CopyFrom(config())
            self.pushed += 1
            yield message


def _metrics_server(tmp_path, pool, *extra: str):
    port_file = tmp_path / "metrics-port"
    server = start_server(tmp_path, "--pool", str(pool), "--max-in-flight-per-stream", str(MAX_IN_FLIGHT),
                          "--metrics-port", "0", "--metrics-port-file", str(port_file), *extra)
    return server, port_file


def test_a_client_that_disconnects_mid_stream_frees_the_servers_resources(tmp_path, small_pool_path):
    """One client cancels its call, another closes its channel, both with batches in flight."""
    server_cm, port_file = _metrics_server(tmp_path, small_pool_path)
    with server_cm as server:
        port = int(port_file.read_text())
        cancelled_channel = grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS)
        closed_channel = grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS)
        producers = [Producer(BIG_BATCH), Producer(BIG_BATCH)]
        try:
            cancelled = transform_pb2_grpc.TransformServiceStub(cancelled_channel).Encode(iter(producers[0]),
                                                                                         timeout=120)
            closed = transform_pb2_grpc.TransformServiceStub(closed_channel).Encode(iter(producers[1]), timeout=120)
            assert next(cancelled).request_id == "r0" and next(closed).request_id == "r0"
            # Neither reads on: each stream holds the server at its bound.
            wait_for(lambda: metric(port, STREAMS) == 2 and metric(port, BATCHES) == 2 * MAX_IN_FLIGHT,
                     what="both streams at their in-flight bound")

            cancelled.cancel()
            closed_channel.close()
            wait_for(lambda: metric(port, STREAMS) == 0 and metric(port, BATCHES) == 0, timeout=15,
                     what="the server to let go of both streams")
            wait_for(lambda: metric(port, "grpc_server_handled_total", **ENCODE, grpc_code="CANCELLED") == 2,
                     timeout=15, what="both calls counted CANCELLED")
        finally:
            for producer in producers:
                producer.stop.set()
            cancelled_channel.close()
            closed_channel.close()

        # The server is whole: a new stream is served, and the gauges come back to 0 after it.
        responses = encode_all(server.target, [request(f"n{i}", images(8, seed=i), cfg=config() if i == 0 else None)
                                               for i in range(3)])
        assert [r.request_id for r in responses] == ["n0", "n1", "n2"]
        assert all(encoded(r).shape == (8, 32, 32, 3) for r in responses)
        wait_for(lambda: metric(port, STREAMS) == 0 and metric(port, BATCHES) == 0, timeout=15, what="idle gauges")
    log = server.log()
    assert log.count("outcome=CANCELLED") == 2 and "Traceback" not in log


def test_a_flooding_client_is_held_back_and_every_answer_arrives(tmp_path, small_pool_path):
    """Two producers that never wait and never read: bounded server work and memory; all answered at the end."""
    server_cm, port_file = _metrics_server(tmp_path, small_pool_path)
    with server_cm as server:
        port = int(port_file.read_text())
        pid = server.process.pid
        channels = [grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) for _ in range(2)]
        producers = [Producer(256) for _ in channels]
        try:
            calls = [transform_pb2_grpc.TransformServiceStub(chan).Encode(iter(producer), timeout=120)
                     for chan, producer in zip(channels, producers, strict=True)]
            # Warm-up: the server reaches its bound, the transport's windows fill and the producers stall.
            wait_for(lambda: metric(port, BATCHES) == 2 * MAX_IN_FLIGHT, what="the in-flight bound")
            stalled = [-1, -1]
            while stalled != [p.pushed for p in producers]:
                stalled = [p.pushed for p in producers]
                time.sleep(1.0)
            rss_start, pushed_start = rss_mib(pid), [p.pushed for p in producers]
            gauge, rss = [], []
            for _ in range(24):  # 6 s of flood
                gauge.append(metric(port, BATCHES))
                rss.append(rss_mib(pid))
                time.sleep(0.25)
            pushed_end = [p.pushed for p in producers]
            for producer in producers:
                producer.stop.set()
            answers = [[r.request_id for r in call] for call in calls]  # read at last
        finally:
            for chan in channels:
                chan.close()
        assert max(gauge) == 2 * MAX_IN_FLIGHT and min(gauge) >= 1, gauge  # at the bound, never past it
        # Backpressure reaches the producers: gRPC took nothing more from them while nothing was read.
        assert pushed_end == pushed_start, (pushed_start, pushed_end)
        assert max(rss) < rss_start * 1.25, (rss_start, rss)
        print(f"flood: pushed {pushed_end} while unread, RSS {rss_start:.1f} MiB -> max {max(rss):.1f} MiB")
        for producer, ids in zip(producers, answers, strict=True):
            assert ids == [f"r{i}" for i in range(producer.pushed)]  # every one, once, in order
    assert "Traceback" not in server.log()


def test_sigterm_drains_streams_then_answers_unavailable(tmp_path, small_pool_path):
    """Streams that ended their input get every answer; one left open past the grace gets UNAVAILABLE,
    as do new calls; the process exits 0."""
    grace = 6
    args = ("--pool", str(small_pool_path), "--grace-seconds", str(grace), "--max-in-flight-per-stream",
            str(MAX_IN_FLIGHT), "--workers", "1")
    with start_server(tmp_path, *args) as server:
        channels = [grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) for _ in range(3)]
        try:
            stubs = [transform_pb2_grpc.TransformServiceStub(chan) for chan in channels]
            # Two streams send all their batches (more than the server reads at once) and half-close.
            finished = [stub.Encode(iter([request(f"s{s}-{i}", images(256, seed=i), cfg=config() if i == 0 else None)
                                          for i in range(6)]), timeout=60)
                        for s, stub in enumerate(stubs[:2])]
            # One stream keeps its input open.
            hold = threading.Event()

            def open_input():
                yield request("o-0", images(16), cfg=config())
                hold.wait(timeout=60)

            left_open = stubs[2].Encode(open_input(), timeout=60)
            assert next(left_open).request_id == "o-0"
            assert [next(call).request_id for call in finished] == ["s0-0", "s1-0"]

            server.process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            time.sleep(0.5)
            with grpc.insecure_channel(server.target) as fresh, pytest.raises(grpc.RpcError) as refused:
                transform_pb2_grpc.TransformServiceStub(fresh).Encode(iter([request("late", images(8), cfg=config())]),
                                                                      timeout=10).__next__()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - sent < grace  # refused at once, not after the drain

            for s, call in enumerate(finished):
                rest = list(call)
                assert [r.request_id for r in rest] == [f"s{s}-{i}" for i in range(1, 6)]
                assert all(encoded(r).shape == (256, 32, 32, 3) for r in rest)
                assert call.code() == grpc.StatusCode.OK
            with pytest.raises(grpc.RpcError) as cut:
                list(left_open)
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE, cut.value
            hold.set()
            assert server.process.wait(timeout=30) == 0
            assert time.monotonic() - sent < grace + 10
        finally:
            for chan in channels:
                chan.close()
    log = server.log()
    assert "shutting down" in log and "Traceback" not in log and "INTERNAL" not in log
