"""Request bytes that do not parse as the method's message become INVALID_ARGUMENT.

gRPC deserializes a request before any handler runs: on a unary method it answers undecodable
bytes with UNKNOWN and the exception's text, on a streaming method the exception escapes the
request iterator into the servicer (and would become INTERNAL). Here every handler's request
deserializer is wrapped so that undecodable bytes become a ``MalformedMessage`` marker, and the
handler is wrapped so that the marker raises ``InvalidArgument``, which the error interceptor (just
outside this one) maps like any other domain error. A stream answers the requests before the bad
one, then ends with INVALID_ARGUMENT: the framing is intact, but the stream's iterator cannot go on.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from instahide_server.errors import InvalidArgument
from instahide_server.interceptors._handlers import Continuation, behavior_of, replace_behavior


class MalformedMessage:
    """What the wrapped deserializer returns for bytes that do not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"request: cannot parse the message ({self.reason})", "request")


class MalformedMessageInterceptor(grpc.aio.ServerInterceptor):
    """Turns undecodable requests into ``InvalidArgument``; must sit inside ``ErrorInterceptor``."""

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        behavior = behavior_of(handler)
        checked = _checked_stream if handler.request_streaming else _checked_message
        if inspect.isasyncgenfunction(behavior):

            async def stream(request_or_iterator, context: grpc.aio.ServicerContext):
                async for response in behavior(checked(request_or_iterator), context):
                    yield response

            wrapped = stream
        elif inspect.iscoroutinefunction(behavior):

            async def call(request_or_iterator, context: grpc.aio.ServicerContext):
                return await behavior(checked(request_or_iterator), context)

            wrapped = call
        else:
            return handler  # synchronous handlers run in grpc's own thread pool; none are registered
        handler = replace_behavior(handler, wrapped)
        return handler._replace(request_deserializer=_lenient(handler.request_deserializer))


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def lenient(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return MalformedMessage(str(exc))

    return lenient


def _checked_message(request: Any) -> Any:
    if isinstance(request, MalformedMessage):
        raise request.error()
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedMessage):
            raise request.error()
        yield request
