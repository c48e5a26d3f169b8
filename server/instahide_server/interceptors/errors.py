"""The last line of error handling: status codes for errors that escape a servicer.

A domain error (errors.py's table) becomes its status code with its message. Anything else becomes
INTERNAL with a generic message, and its traceback goes to the log, never to the client. Aborts and
cancellations pass through untouched.
"""

from __future__ import annotations

import inspect
import logging

import grpc

from instahide_server.errors import status_of
from instahide_server.interceptors._handlers import Continuation, behavior_of, replace_behavior

logger = logging.getLogger(__name__)

_GENERIC_MESSAGE = "internal error; the server log has the details"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping a handler to status codes."""

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        behavior = behavior_of(handler)
        method = handler_call_details.method
        if inspect.isasyncgenfunction(behavior):

            async def stream(request_or_iterator, context: grpc.aio.ServicerContext):
                try:
                    async for response in behavior(request_or_iterator, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, method, exc)

            return replace_behavior(handler, stream)
        if inspect.iscoroutinefunction(behavior):

            async def call(request_or_iterator, context: grpc.aio.ServicerContext):
                try:
                    return await behavior(request_or_iterator, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, method, exc)

            return replace_behavior(handler, call)
        return handler  # synchronous handlers run in grpc's own thread pool; none are registered


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    status = status_of(exc)
    if status is not None:
        logger.info("%s failed: %s %s", method, status.code.name, status.message)
        await context.abort(status.code, status.message)
    logger.error("%s failed unexpectedly", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, _GENERIC_MESSAGE)
