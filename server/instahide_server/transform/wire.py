"""Serialized ``EncodeResponse`` messages, built with one copy of the encoded pixels.

Building the response as a protobuf message and then serializing it copies the encoded batch (the
bulk of the message) three or four times: array → bytes → message field → wire. Here the small fields
go through protobuf as usual and the ``encoded`` tensor is written as a length-delimited field by
hand, so its content is copied once, from the array into the final ``bytes``. Protobuf parsers accept
fields in any order, so the result parses exactly like ``EncodeResponse.SerializeToString()`` would.
"""

from __future__ import annotations

import numpy as np
from instahide_client.instahide.v1 import tensor_pb2, transform_pb2
from instahide_client.tensors import data_type

from instahide_server.errors import Status

_LEN = 2  # wire type of length-delimited fields
_ENCODED = transform_pb2.EncodeResponse.DESCRIPTOR.fields_by_name["encoded"].number
_CONTENT = tensor_pb2.Tensor.DESCRIPTOR.fields_by_name["content"].number


def encode_response(request_id: str, encoded: np.ndarray, rest: transform_pb2.EncodeResponse) -> bytes:
    """A serialized response: ``rest`` (labels, keys, flags) plus ``encoded`` as its ``encoded`` tensor.

    Args:
        request_id: echoed from the request.
        encoded: (N, H, W, C) float32 or float16 array, C-contiguous.
        rest: the response's other fields; its ``encoded`` and ``request_id`` must be unset.
    """
    rest.request_id = request_id
    wire = np.ascontiguousarray(encoded, dtype=encoded.dtype.newbyteorder("<"))
    header = tensor_pb2.Tensor(dtype=data_type(wire.dtype), shape=wire.shape).SerializeToString()
    content = wire.reshape(-1).view(np.uint8).data
    content_field = _tag(_CONTENT) + _varint(wire.nbytes)
    tensor_length = len(header) + len(content_field) + wire.nbytes
    return b"".join((rest.SerializeToString(), _tag(_ENCODED), _varint(tensor_length), header,
                     content_field, content))


def error_response(request_id: str, status: Status) -> bytes:
    """A serialized response carrying only a per-request error."""
    error = transform_pb2.ItemError(code=status.code_value, message=status.message, field=status.field)
    return transform_pb2.EncodeResponse(request_id=request_id, error=error).SerializeToString()


def _tag(field_number: int) -> bytes:
    return _varint(field_number << 3 | _LEN)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
