"""Bearer-token authentication for every RPC except health probes, and who the caller is.

With tokens configured (one, or one per principal from a tokens file), a call must carry
``authorization: Bearer <token>`` metadata; the token is compared in constant time with every
configured one. ``Principals.of(context)`` names the caller for servicers that keep per-principal
resources (keys): the principal whose token the call carries, or "" on a server without tokens.
Health checks (``/grpc.health.v1.Health/``) stay open so load balancers
and kubelets can probe without a secret. Reflection is *not* exempt: it describes the whole API, so
it is for callers holding the token (``grpcurl -H 'authorization: Bearer …'``). The token never
appears in a log line or an error message.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence

import grpc

from instahide_server.interceptors._handlers import Continuation, replace_behavior

logger = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_SCHEME = "bearer "


ANONYMOUS = ""  # the one principal of a server without tokens


class Principals:
    """The configured principals and their tokens (none: every caller is ``ANONYMOUS``)."""

    def __init__(self, tokens: Mapping[str, str] | None) -> None:
        self._tokens = [(principal, token.encode()) for principal, token in (tokens or {}).items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def identify(self, metadata: Sequence[tuple[str, str | bytes]]) -> tuple[str | None, str | None]:
        """(principal, None) for good credentials, (None, why) for bad ones; ANONYMOUS without tokens."""
        if not self._tokens:
            return ANONYMOUS, None
        values = [value for key, value in metadata if key.lower() == "authorization"]
        if not values:
            return None, "missing 'authorization: Bearer <token>' metadata"
        value = values[0]
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        if value[:len(_SCHEME)].lower() != _SCHEME:
            return None, "the authorization metadata must use the Bearer scheme"
        presented = value[len(_SCHEME):].strip().encode()
        found = None
        for principal, token in self._tokens:  # every comparison made, whichever matches
            if hmac.compare_digest(presented, token):
                found = principal
        return (found, None) if found is not None else (None, "invalid bearer token")

    def of(self, context: grpc.aio.ServicerContext) -> str:
        """The calling principal (the interceptor has already refused calls without one)."""
        principal, problem = self.identify(context.invocation_metadata() or ())
        if principal is None:
            raise RuntimeError(f"unauthenticated call reached a servicer: {problem}")
        return principal


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a configured bearer token with UNAUTHENTICATED."""

    def __init__(self, principals: Principals) -> None:
        self._principals = principals

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        principal, problem = self._principals.identify(handler_call_details.invocation_metadata or ())
        if principal is not None:
            return handler
        logger.info("refused %s: %s", method, problem)

        async def refuse(request_or_iterator, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

        return replace_behavior(handler, refuse)
