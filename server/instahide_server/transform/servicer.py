"""``instahide.v1.TransformService``: the Encode stream, pipelined, for every transform family.

Per stream, a reader task takes requests off the wire and hands each to the encoding thread pool as
soon as it arrives, while the handler itself yields the finished responses in request order. At most
``max_in_flight`` requests are read but not yet answered: the reader waits for a free slot before it
reads the next message, so gRPC's flow control pushes back on a client that sends faster than the
server encodes, and memory stays bounded. Decoding, encoding and serialization (in threads) overlap
with network I/O (on the event loop).

Responses are already serialized (``encoder.BatchEncoder`` builds them in the encoding thread), so the
method is registered with no response serializer; ``add_to_server`` does that. They are sent with
``context.write`` (not yielded) so that a send failing because the client left is seen here (``_write``).

A client that cancels or disconnects ends the handler (CancelledError): the reader is cancelled, batches
not yet started are dropped, and the stream and batch gauges come back down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import grpc
from instahide_client.instahide.v1 import transform_pb2, transform_pb2_grpc

from instahide_server.interceptors.auth import Principals
from instahide_server.metrics import ServerMetrics
from instahide_server.transform.encoder import BatchEncoder, Outcome

logger = logging.getLogger(__name__)

SERVICE_NAME = transform_pb2.DESCRIPTOR.services_by_name["TransformService"].full_name
_END = object()  # the reader's last queue item after the client half-closes


@dataclass
class _StreamStats:
    peer: str
    started: float = field(default_factory=time.monotonic)
    batches: int = 0
    images: int = 0
    errors: int = 0
    read: int = 0  # requests handed to the encoder (the reader counts them)
    answered: int = 0  # responses handed to gRPC

    def count(self, outcome: Outcome) -> None:
        self.batches += 1
        self.images += outcome.images
        self.errors += outcome.error is not None


class TransformServicer(transform_pb2_grpc.TransformServiceServicer):
    """Encodes streams of image batches; see the module docstring for the pipeline."""

    def __init__(self, encoder: BatchEncoder, executor: Executor, *, max_in_flight: int,
                 metrics: ServerMetrics | None = None, principals: Principals | None = None) -> None:
        self._encoder = encoder
        self._principals = principals if principals is not None else Principals(None)
        self._executor = executor
        self._max_in_flight = max_in_flight
        self._metrics = metrics if metrics is not None else ServerMetrics()  # unexported when not given

    async def Encode(self, request_iterator: AsyncIterator[transform_pb2.EncodeRequest],
                     context: grpc.aio.ServicerContext) -> None:
        stats = _StreamStats(peer=context.peer())
        slots = asyncio.Semaphore(self._max_in_flight)
        pending: asyncio.Queue = asyncio.Queue()  # futures of Outcome, in request order; bounded by slots
        principal = self._principals.of(context)
        reader = asyncio.create_task(self._read(request_iterator, slots, pending, stats, principal))
        outcome = "OK"
        in_flight = self._metrics.encode_streams_in_flight
        batches_in_flight = self._metrics.encode_batches_in_flight
        in_flight.inc()
        try:
            while (item := await pending.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                result: Outcome = await item
                stats.count(result)
                await _write(context, result.payload)
                stats.answered += 1
                batches_in_flight.dec()
                slots.release()
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            raise
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            in_flight.dec()
            reader.cancel()  # it never resumes past its current await, so ``stats.read`` is final
            batches_in_flight.dec(stats.read - stats.answered)
            while not pending.empty():
                item = pending.get_nowait()
                if isinstance(item, asyncio.Future):
                    item.cancel()  # not yet started: never runs; running: its result is dropped
            logger.info("Encode peer=%s batches=%d images=%d errors=%d outcome=%s seconds=%.3f", stats.peer,
                        stats.batches, stats.images, stats.errors, outcome, time.monotonic() - stats.started)

    async def _read(self, requests: AsyncIterator[transform_pb2.EncodeRequest], slots: asyncio.Semaphore,
                    pending: asyncio.Queue, stats: _StreamStats, principal: str) -> None:
        """Submit each request to the thread pool as it arrives; a request without config reuses the last."""
        loop = asyncio.get_running_loop()
        config = transform_pb2.EncodeConfig()
        under_config = 0  # requests so far under ``config``: a seeded config seeds each with (seed, i)
        iterator = aiter(requests)
        try:
            while True:
                await slots.acquire()
                try:
                    request = await anext(iterator)
                except StopAsyncIteration:
                    break
                if request.HasField("config"):
                    config = transform_pb2.EncodeConfig()
                    config.CopyFrom(request.config)  # a copy, so the stream does not pin the request's images
                    under_config = 0
                pending.put_nowait(
                    loop.run_in_executor(self._executor, self._encoder.run, request, config, under_config, principal))
                stats.read += 1
                self._metrics.encode_batches_in_flight.inc()
                under_config += 1
        except Exception as exc:
            pending.put_nowait(exc)  # answered after the requests already read, then the stream ends
            return
        pending.put_nowait(_END)


async def _write(context: grpc.aio.ServicerContext, payload: bytes) -> None:
    """Send one response; a send that gRPC fails means the call is over, which ends the stream as cancelled.

    Response sizes are checked before encoding, so gRPC fails a send only once the call has ended: the
    client cancelled, went away or ran out of time (or the server stopped) while we were sending. Its
    own notice of that may come a moment later or not reach the handler at all, and left to itself it
    logs the failed send as a server error with a traceback; a client leaving is no server error.
    """
    try:
        await context.write(payload)
    except Exception as exc:  # grpc's ExecuteBatchError, which it does not export
        raise asyncio.CancelledError(f"the call ended while a response was being sent: {exc}") from None


def add_to_server(servicer: TransformServicer, server: grpc.aio.Server) -> None:
    """Register the servicer; responses go out as the bytes the servicer yields."""
    handlers = {
        "Encode": grpc.stream_stream_rpc_method_handler(
            servicer.Encode,
            request_deserializer=transform_pb2.EncodeRequest.FromString,
            response_serializer=None,  # the servicer yields serialized EncodeResponse messages
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
