"""Rebuilding an ``RpcMethodHandler`` around a wrapped behaviour, whatever its streaming kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
"""What ``intercept_service`` calls to get the next interceptor's (or the server's) handler."""


def behavior_of(handler: grpc.RpcMethodHandler) -> Behavior:
    """The handler's single behaviour (the one of its four slots that is set)."""
    return (handler.unary_unary or handler.unary_stream or handler.stream_unary
            or handler.stream_stream)


def replace_behavior(handler: grpc.RpcMethodHandler, behavior: Behavior) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` that runs ``behavior``, keeping its (de)serializers."""
    if handler.request_streaming and handler.response_streaming:
        slot = "stream_stream"
    elif handler.request_streaming:
        slot = "stream_unary"
    elif handler.response_streaming:
        slot = "unary_stream"
    else:
        slot = "unary_unary"
    return handler._replace(**{slot: behavior})
