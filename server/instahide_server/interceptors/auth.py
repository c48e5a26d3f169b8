"""Bearer-token authentication for every RPC except health probes.

With a token configured, a call must carry ``authorization: Bearer <token>`` metadata; the token is
compared in constant time. Health checks (``/grpc.health.v1.Health/``) stay open so load balancers
and kubelets can probe without a secret. Reflection is *not* exempt: it describes the whole API, so
it is for callers holding the token (``grpcurl -H 'authorization: Bearer …'``). The token never
appears in a log line or an error message.
"""

from __future__ import annotations

import hmac
import logging

import grpc

from instahide_server.interceptors._handlers import Continuation, replace_behavior

logger = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_SCHEME = "bearer "


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the configured bearer token with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        problem = self._problem(handler_call_details.invocation_metadata or ())
        if problem is None:
            return handler
        logger.info("refused %s: %s", method, problem)

        async def refuse(request_or_iterator, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

        return replace_behavior(handler, refuse)

    def _problem(self, metadata) -> str | None:
        """Why the call's credentials are refused, or None when they are good."""
        values = [value for key, value in metadata if key.lower() == "authorization"]
        if not values:
            return "missing 'authorization: Bearer <token>' metadata"
        value = values[0]
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        if value[:len(_SCHEME)].lower() != _SCHEME:
            return "the authorization metadata must use the Bearer scheme"
        presented = value[len(_SCHEME):].strip().encode()
        if not hmac.compare_digest(presented, self._token):
            return "invalid bearer token"
        return None
