"""``--max-concurrent-rpcs`` and ``--max-concurrent-streams`` on a real server.

Streams are held open by request iterators that wait on a queue, so a test decides exactly how many
calls are in progress at once.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from instahide_client.instahide.v1 import instahide_pb2, transform_pb2, transform_pb2_grpc
from instahide_client.tensors import to_numpy
from server_testlib import config, encoded, images, request, start_server

MAX_RPCS = 2


class HeldStream:
    """An Encode stream kept open between requests: ``send`` one batch, wait for its answer, go on."""

    def __init__(self, channel: grpc.Channel, name: str) -> None:
        self._requests: queue.Queue[transform_pb2.EncodeRequest | None] = queue.Queue()
        self._name = name
        self._sent = 0
        self.call = transform_pb2_grpc.TransformServiceStub(channel).Encode(self._iterate(), timeout=60)

    def _iterate(self) -> Iterator[transform_pb2.EncodeRequest]:
        while (item := self._requests.get()) is not None:
            yield item

    def send(self, batch: np.ndarray) -> transform_pb2.EncodeResponse:
        cfg = (config(mode=instahide_pb2.MIXING_MODE_INSIDE, sign_flip=False, return_keys=True)
               if self._sent == 0 else None)  # the config carries over to later requests
        self._sent += 1
        self._requests.put(request(f"{self._name}-{self._sent}", batch, cfg=cfg))
        return next(self.call)

    def close(self) -> grpc.StatusCode:
        self._requests.put(None)
        assert list(self.call) == []
        return self.call.code()


def health(channel: grpc.Channel, timeout: float = 10) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def own_connection(target: str) -> grpc.Channel:
    """A channel on its own HTTP/2 connection (channels in one process otherwise share one)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def check_encoding(batch: np.ndarray, response: transform_pb2.EncodeResponse) -> None:
    """Inside mode, no sign flip: each encoding is the key's mix of images of its own batch."""
    keys = response.instahide_keys
    x = batch.astype(np.float64) / 127.5 - 1
    expected = np.einsum("nk,nkhwc->nhwc", to_numpy(keys.coefficients), x[to_numpy(keys.indices)])
    np.testing.assert_allclose(encoded(response), expected, atol=1e-5)


@pytest.fixture(scope="module")
def limited(tmp_path_factory, small_pool_path):
    with start_server(tmp_path_factory.mktemp("limited"), "--pool", str(small_pool_path),
                      "--max-concurrent-rpcs", str(MAX_RPCS), health_port=True) as proc:
        yield proc


def test_calls_beyond_the_limit_are_refused_while_the_held_ones_finish(limited):
    with contextlib.ExitStack() as stack:
        channels = [stack.enter_context(own_connection(limited.target)) for _ in range(MAX_RPCS + 1)]
        held = [HeldStream(channels[i], f"held{i}") for i in range(MAX_RPCS)]
        first = [images(6, seed=10 + i) for i in range(MAX_RPCS)]
        for stream, batch in zip(held, first, strict=True):
            check_encoding(batch, stream.send(batch))  # both in progress now

        extra = channels[MAX_RPCS]
        with pytest.raises(grpc.RpcError) as caught:
            list(transform_pb2_grpc.TransformServiceStub(extra).Encode(iter([request("x", cfg=config())]),
                                                                       timeout=10))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as caught:  # the main port's health counts against the limit too
            health(extra)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with own_connection(limited.health_target) as probe:  # the health-only port does not
            assert health(probe) == health_pb2.HealthCheckResponse.SERVING

        for i, stream in enumerate(held):  # the held streams go on, correctly, and end OK
            second = images(4, seed=20 + i)
            response = stream.send(second)
            assert response.request_id == f"held{i}-2"
            check_encoding(second, response)
            assert stream.close() == grpc.StatusCode.OK

        assert health(extra) == health_pb2.HealthCheckResponse.SERVING  # room again
        responses = list(transform_pb2_grpc.TransformServiceStub(extra).Encode(
            iter([request("after", cfg=config())]), timeout=10))
        assert [r.request_id for r in responses] == ["after"] and encoded(responses[0]).shape == (8, 32, 32, 3)


def test_streams_beyond_the_per_connection_limit_wait_for_a_free_one(tmp_path, small_pool_path):
    with start_server(tmp_path, "--pool", str(small_pool_path), "--max-concurrent-streams", "1") as server, \
            own_connection(server.target) as shared, own_connection(server.target) as other:
        held = HeldStream(shared, "held")
        batch = images(4, seed=1)
        check_encoding(batch, held.send(batch))
        with pytest.raises(grpc.RpcError) as caught:  # queued by the client behind the held stream
            health(shared, timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert health(other) == health_pb2.HealthCheckResponse.SERVING  # another connection is not held up
        assert held.close() == grpc.StatusCode.OK
        assert health(shared) == health_pb2.HealthCheckResponse.SERVING
