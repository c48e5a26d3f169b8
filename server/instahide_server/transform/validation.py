"""Wire-level checks every family shares: an ``EncodeRequest``'s images, labels and output type, and the limits.

Only what is specific to the wire is checked here: presence, tensor decoding, enum values, the image rank and
size limits. What a family checks itself (instahide_ops' ``InvalidInputError``: batch size, label range, k,
coefficient bounds, non-finite pixels) carries a request field path (``config.instahide.k``,
``images.content``…) and reaches the client through the same error table (errors.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from instahide_client.instahide.v1 import tensor_pb2, transform_pb2
from instahide_client.tensors import TensorFormatError, numpy_dtype, to_numpy

from instahide_server.errors import InvalidArgument, ResourceExhausted

_IMAGE_DTYPES = (tensor_pb2.DATA_TYPE_UINT8, tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)
_FLOAT_DTYPES = (tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)
_OUTPUT_DTYPES = {
    tensor_pb2.DATA_TYPE_UNSPECIFIED: torch.float32,
    tensor_pb2.DATA_TYPE_FLOAT32: torch.float32,
    tensor_pb2.DATA_TYPE_FLOAT16: torch.float16,
}
# Room for everything in a response besides its tensors' contents (ids, shapes, tags, fingerprint).
RESPONSE_OVERHEAD_BYTES = 4096


@dataclass(frozen=True)
class InputSpec:
    """What a family takes in a request's ``images`` tensor: its ranks (with their layouts, for messages) and
    element types."""

    layouts: dict[int, str]  # rank -> layout, e.g. {4: "(N, H, W, C)"}
    dtypes: tuple[int, ...]


IMAGES = InputSpec({4: "(N, H, W, C)"}, _IMAGE_DTYPES)
MODEL_OUTPUTS = InputSpec({2: "(N, C)", 4: "(N, C, h, w)"}, _FLOAT_DTYPES)


@dataclass(frozen=True)
class Limits:
    """Size limits of one server."""

    max_images_per_request: int
    max_message_bytes: int


@dataclass(frozen=True)
class Batch:
    """A request's checked images, labels and output element type."""

    images: np.ndarray  # (N, H, W, C) uint8 / float16 / float32, a read-only view of the request
    labels: np.ndarray  # (N,) int64
    out_dtype: torch.dtype

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of each image."""
        _, height, width, channels = self.images.shape
        return height, width, channels


def check_batch(request: transform_pb2.EncodeRequest, config: transform_pb2.EncodeConfig, limits: Limits,
                inputs: InputSpec = IMAGES) -> Batch:
    """Decode and check one request's images (of the family's ``inputs``) and labels, and its effective config's
    output type.

    Raises:
        InvalidArgument: a malformed request; ``field`` names the request field.
        ResourceExhausted: more images than allowed.
    """
    if not request.HasField("images"):
        raise InvalidArgument("images: required", "images")
    images = _images(request.images, limits, inputs)
    labels = np.fromiter(request.labels, dtype=np.int64, count=len(request.labels))
    if config.output_dtype not in _OUTPUT_DTYPES:
        raise InvalidArgument(f"config.output_dtype: expected DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT16, "
                              f"got {_dtype_name(config.output_dtype)}", "config.output_dtype")
    return Batch(images, labels, _OUTPUT_DTYPES[config.output_dtype])


def check_response_size(size: int, limits: Limits) -> None:
    """Refuse a batch whose response (``size`` bytes of tensors) would pass the message limit.

    Raises:
        ResourceExhausted: naming the size and the limit.
    """
    size += RESPONSE_OVERHEAD_BYTES
    if size > limits.max_message_bytes:
        raise ResourceExhausted(f"images: the response would take about {size} bytes, more than this "
                                f"server's message limit of {limits.max_message_bytes}; send smaller batches",
                                "images")


def _images(tensor: tensor_pb2.Tensor, limits: Limits, inputs: InputSpec) -> np.ndarray:
    try:
        numpy_dtype(tensor.dtype)
    except TensorFormatError as exc:
        raise InvalidArgument(f"images.dtype: {exc}", "images.dtype") from None
    if tensor.dtype not in inputs.dtypes:
        names = ", ".join(_dtype_name(d) for d in inputs.dtypes)
        raise InvalidArgument(f"images.dtype: expected one of {names}, got {_dtype_name(tensor.dtype)}",
                              "images.dtype")
    shape = list(tensor.shape)
    if len(shape) not in inputs.layouts:
        expected = " or ".join(f"rank {rank} {layout}" for rank, layout in inputs.layouts.items())
        raise InvalidArgument(f"images.shape: expected {expected}, got {shape}", "images.shape")
    if any(d <= 0 for d in shape):
        raise InvalidArgument(f"images.shape: every dimension must be positive, got {shape}", "images.shape")
    if shape[0] > limits.max_images_per_request:
        raise ResourceExhausted(f"images.shape: {shape[0]} images in one request, more than this server's "
                                f"limit of {limits.max_images_per_request}; send smaller batches",
                                "images.shape")
    try:
        return to_numpy(tensor)
    except TensorFormatError as exc:
        raise InvalidArgument(f"images.{exc.field}: {exc}", f"images.{exc.field}") from None


def _dtype_name(value: int) -> str:
    return tensor_pb2.DataType.Name(value) if value in tensor_pb2.DataType.values() else str(value)
