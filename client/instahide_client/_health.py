"""The two ``grpc.health.v1`` messages, encoded by hand.

The standard health service is a unary ``/grpc.health.v1.Health/Check`` whose
request is ``message HealthCheckRequest { string service = 1; }`` and whose
response is ``message HealthCheckResponse { ServingStatus status = 1; }``. Its
generated classes ship in ``grpcio-health-checking``, a distribution the client
does not otherwise need (the server does). Rather than add a dependency for
two one-field messages, the client calls the method with a generic unary
callable on raw bytes and encodes the messages here; their wire format is
frozen by the protobuf compatibility rules.
"""

from __future__ import annotations

CHECK_METHOD = "/grpc.health.v1.Health/Check"

# HealthCheckResponse.ServingStatus.
STATUS_NAMES: dict[int, str] = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def encode_request(service: str) -> bytes:
    """Serialize ``HealthCheckRequest(service=service)`` (empty bytes for the default "")."""
    if not service:
        return b""  # proto3 omits default values
    raw = service.encode("utf-8")
    return bytes([(1 << 3) | _LENGTH_DELIMITED]) + _encode_varint(len(raw)) + raw


def decode_response(data: bytes) -> int:
    """The ``status`` of a serialized ``HealthCheckResponse``; unknown fields are skipped.

    Raises:
        ValueError: the bytes are not a valid protobuf message.
    """
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = _decode_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _decode_varint(data, pos)
            if number == 1:
                status = value  # last one wins, as protobuf parsers do
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _decode_varint(data, pos)
            pos += length
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated message")
    return status


def status_name(status: int) -> str:
    """``"SERVING"`` etc.; an enum value this client does not know reads as its number."""
    return STATUS_NAMES.get(status, str(status))
