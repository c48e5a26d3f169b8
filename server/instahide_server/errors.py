"""Domain errors and the one table that maps them to gRPC status codes."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from instahide_client.tensors import TensorFormatError

from instahide_ops.errors import InvalidInputError


class ServiceError(Exception):
    """A request the service refuses; ``field`` is the path of the offending request field."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class InvalidArgument(ServiceError):
    """The request is malformed or out of range."""


class ResourceExhausted(ServiceError):
    """The request is well-formed but larger than this server accepts (or its queue is full)."""


class NotFound(ServiceError):
    """The named resource (an audit, a dataset) does not exist."""


class AlreadyExists(ServiceError):
    """The resource a request would create is already there (e.g. importing a key under a taken name)."""


class DataLoss(ServiceError):
    """Stored data cannot be read back as written (e.g. a wrapped key that no longer opens)."""


class FailedPrecondition(ServiceError):
    """The resource is not in a state that allows the request (e.g. deleting a running audit)."""


class PermissionDenied(ServiceError):
    """The request names something the server will not touch (e.g. a path outside the data root)."""


class Unavailable(ServiceError):
    """The server cannot take the request now (e.g. it is shutting down); retrying later may work."""


# Domain error type -> status code. Subclasses match through their nearest listed base.
_STATUS: dict[type[Exception], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    DataLoss: grpc.StatusCode.DATA_LOSS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    TensorFormatError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
}

#: Everything a single request may fail with without ending its stream.
REQUEST_ERRORS: tuple[type[Exception], ...] = tuple(_STATUS)


@dataclass(frozen=True)
class Status:
    """A domain error as the wire reports it."""

    code: grpc.StatusCode
    message: str
    field: str

    @property
    def code_value(self) -> int:
        """The google.rpc.Code integer (e.g. 3 for INVALID_ARGUMENT)."""
        return self.code.value[0]


def status_of(exc: BaseException) -> Status | None:
    """The status a domain error maps to; None for anything unexpected."""
    for cls in type(exc).__mro__:
        code = _STATUS.get(cls)
        if code is not None:
            return Status(code, str(exc), getattr(exc, "field", "") or "")
    return None
