"""The standard ``grpc_server_*`` Prometheus family, for the grpc.aio server.

The usual package (py-grpc-prometheus) only intercepts the synchronous server, so this is our own:

- ``grpc_server_started_total``: an RPC reached its handler;
- ``grpc_server_handled_total``: it ended, once, with its final code (``grpc_code``);
- ``grpc_server_msg_received_total`` / ``grpc_server_msg_sent_total``: one per message, streams included;
- ``grpc_server_handling_seconds``: start to end, a histogram.

Labels: ``grpc_type`` (unary | client_stream | server_stream | bidi_stream), ``grpc_service``,
``grpc_method``; only these, so the series count stays bounded by the API, never by callers.

The final code: OK when the handler returns; the code an ``abort`` (or ``set_code``) chose; CANCELLED
when the call is cancelled (client cancel, deadline, or a stream abandoned mid-way); UNKNOWN for an
exception that escapes (the error interceptor, inside this one, leaves none). Messages written with
``context.write`` / read with ``context.read`` (grpc's health Watch) are counted through a thin
context wrapper. It is the outermost interceptor (see server.py), so refused calls are counted too.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from instahide_server.interceptors._handlers import Continuation, behavior_of, replace_behavior

UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"
# Call latencies from sub-millisecond unary calls to long streams.
HANDLING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, float("inf"))
_LABELS = ("grpc_type", "grpc_service", "grpc_method")


def grpc_type(handler: grpc.RpcMethodHandler) -> str:
    """The handler's streaming kind, named as the Prometheus gRPC metrics name it."""
    if handler.request_streaming and handler.response_streaming:
        return BIDI_STREAM
    if handler.request_streaming:
        return CLIENT_STREAM
    if handler.response_streaming:
        return SERVER_STREAM
    return UNARY


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


class GrpcMetrics:
    """The family's metrics, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", _LABELS,
                               registry=registry)
        self.handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                               (*_LABELS, "grpc_code"), registry=registry)
        self.received = Counter("grpc_server_msg_received_total", "Messages received by the server.", _LABELS,
                                registry=registry)
        self.sent = Counter("grpc_server_msg_sent_total", "Messages sent by the server.", _LABELS,
                            registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "Seconds from an RPC's start to its end.",
                                 _LABELS, buckets=HANDLING_BUCKETS, registry=registry)


class _Call:
    """One RPC's bookkeeping: started on creation, handled exactly once by ``end``."""

    __slots__ = ("_ended", "_labels", "_metrics", "_started", "received", "sent")

    def __init__(self, metrics: GrpcMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._started = time.perf_counter()
        self._ended = False
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        metrics.started.labels(*labels).inc()

    def end(self, code: grpc.StatusCode) -> None:
        if self._ended:
            return
        self._ended = True
        self._metrics.handled.labels(*self._labels, code.name).inc()
        self._metrics.seconds.labels(*self._labels).observe(time.perf_counter() - self._started)


class _CountingContext:
    """Forwards everything to the real context, counting ``write`` and ``read`` messages."""

    def __init__(self, context: grpc.aio.ServicerContext, call: _Call) -> None:
        self._context = context
        self._call = call

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._call.sent.inc()

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            self._call.received.inc()
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # grpc.aio can report the raw integer
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC that reaches a registered handler; see the module docstring."""

    def __init__(self, metrics: GrpcMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return None
        kind = grpc_type(handler)
        labels = (kind, *split_method(handler_call_details.method))
        behavior = behavior_of(handler)
        metrics = self._metrics
        request_streaming = handler.request_streaming
        response_streaming = handler.response_streaming

        def begin(request_or_iterator, context):
            call = _Call(metrics, labels)
            if request_streaming:
                request_or_iterator = _count(request_or_iterator, call)
            else:
                call.received.inc()
            if request_streaming or response_streaming:
                context = _CountingContext(context, call)
            return call, request_or_iterator, context

        if inspect.isasyncgenfunction(behavior):

            async def stream(request_or_iterator, context: grpc.aio.ServicerContext):
                call, request_or_iterator, wrapped = begin(request_or_iterator, context)
                error: BaseException | None = None
                try:
                    async for response in behavior(request_or_iterator, wrapped):
                        yield response
                        call.sent.inc()
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    call.end(_final_code(context, error))

            return replace_behavior(handler, stream)
        if not inspect.iscoroutinefunction(behavior):
            return handler  # synchronous handlers run in grpc's own thread pool; none are registered

        async def unary(request_or_iterator, context: grpc.aio.ServicerContext):
            call, request_or_iterator, wrapped = begin(request_or_iterator, context)
            error: BaseException | None = None
            try:
                response = await behavior(request_or_iterator, wrapped)
                if not response_streaming and response is not None:
                    call.sent.inc()
                return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.end(_final_code(context, error))

        return replace_behavior(handler, unary)


async def _count(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for request in requests:
        call.received.inc()
        yield request
