"""numpy ⇄ ``instahide.v1.Tensor``: row-major, little-endian bytes, checked on the way in.

Public: the server converts its tensors with it too.
"""

from __future__ import annotations

import math

import numpy as np

from instahide_client.instahide.v1 import tensor_pb2

_TO_NUMPY: dict[int, np.dtype] = {
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
}
_FROM_NUMPY: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in _TO_NUMPY.items()}


class TensorFormatError(ValueError):
    """A tensor message that cannot be decoded; ``field`` names the bad part."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def numpy_dtype(dtype: int) -> np.dtype:
    """The numpy dtype of a ``DataType`` value; raises TensorFormatError when unsupported."""
    try:
        return _TO_NUMPY[dtype]
    except KeyError:
        name = tensor_pb2.DataType.Name(dtype) if dtype in tensor_pb2.DataType.values() else str(dtype)
        raise TensorFormatError(f"unsupported dtype {name}", "dtype") from None


def data_type(dtype: np.dtype | type) -> int:
    """The ``DataType`` value of a numpy dtype; raises TypeError when unsupported."""
    dt = np.dtype(dtype).newbyteorder("=")
    try:
        return _FROM_NUMPY[dt]
    except KeyError:
        supported = ", ".join(str(d) for d in _FROM_NUMPY)
        raise TypeError(f"unsupported dtype {dt}; expected one of {supported}") from None


def to_tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    """Pack an array into a Tensor message (copies only when not C-contiguous little-endian)."""
    array = np.asarray(array)
    code = data_type(array.dtype)
    wire = np.ascontiguousarray(array, dtype=_TO_NUMPY[code])
    return tensor_pb2.Tensor(dtype=code, shape=wire.shape, content=wire.tobytes())


def to_numpy(tensor: tensor_pb2.Tensor, *, max_elements: int | None = None) -> np.ndarray:
    """Unpack a Tensor message into a read-only array viewing its bytes.

    Raises:
        TensorFormatError: unsupported dtype, a negative dimension, too many
            elements, or a byte length that does not match shape × element size.
    """
    dtype = numpy_dtype(tensor.dtype)
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorFormatError(f"negative dimension in shape {list(shape)}", "shape")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise TensorFormatError(f"shape {list(shape)} has {count} elements, more than {max_elements}", "shape")
    expected = count * dtype.itemsize
    if len(tensor.content) != expected:
        raise TensorFormatError(
            f"content has {len(tensor.content)} bytes; shape {list(shape)} of {dtype} needs {expected}",
            "content",
        )
    return np.frombuffer(tensor.content, dtype=dtype).reshape(shape)


def optional_numpy(message, field: str) -> np.ndarray | None:
    """The array in ``message.<field>``, or None when that tensor field is unset or empty."""
    if not message.HasField(field):
        return None
    array = to_numpy(getattr(message, field))
    return array if array.size else None
