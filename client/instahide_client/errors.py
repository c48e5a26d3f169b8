"""The one exception type for every failed RPC, whole-call or per item."""

from __future__ import annotations

import grpc

# google.rpc.Code values (what EncodeError.code carries) → grpc.StatusCode.
_CODES_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a google.rpc.Code integer (UNKNOWN when not a valid code)."""
    return _CODES_BY_VALUE.get(int(value), grpc.StatusCode.UNKNOWN)


class InstaHideError(Exception):
    """An RPC failed: the call ended with a status, or the service answered one request with an error.

    Attributes:
        code: the ``grpc.StatusCode``, e.g. ``grpc.StatusCode.INVALID_ARGUMENT``.
        details: the service's (or gRPC's) message.
        field: for a per-request error, the path of the offending request field
            (e.g. ``"labels"``); empty otherwise.
        request_id: for a per-request error, the failed request's id; None otherwise.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, field: str = "",
                 request_id: str | None = None) -> None:
        self.code = code
        self.details = details
        self.field = field
        self.request_id = request_id
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.details}"
        if self.field:
            text += f" (field {self.field})"
        if self.request_id is not None:
            text += f" [request {self.request_id}]"
        return text

    def __repr__(self) -> str:
        return (f"InstaHideError({self.code.name}, {self.details!r}, field={self.field!r}, "
                f"request_id={self.request_id!r})")

    def __reduce__(self):  # picklable (errors cross DataLoader worker processes)
        return (_rebuild, (self.code.name, self.details, self.field, self.request_id))

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> InstaHideError:
        """Wrap a ``grpc.RpcError`` raised by a call (callers re-raise it ``from None``)."""
        code = (error.code() if isinstance(error, grpc.Call) else None) or grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        details = details or code.value[1]  # gRPC's description when the peer sent none
        return cls(code, details + _hint(code, details))


def _hint(code: grpc.StatusCode, details: str) -> str:
    """What to do about gRPC's own terse failures, as a suffix ("" when none applies)."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in details:
        return ("; send fewer images a request (batch_size / --batch-size), or raise max_message_bytes on "
                "both sides (the server's --max-message-bytes)")
    if code == grpc.StatusCode.UNAVAILABLE and any(word in details for word in ("SSL", "ssl", "handshake", "TLS")):
        return "; is the server plaintext (no --tls-cert-file)? Drop --tls/--ca-file, or check its certificate"
    return ""


def _rebuild(code_name: str, details: str, field: str, request_id: str | None) -> InstaHideError:
    return InstaHideError(grpc.StatusCode[code_name], details, field=field, request_id=request_id)
