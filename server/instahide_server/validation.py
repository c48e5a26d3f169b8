"""Wire-level checks: an ``EncodeRequest`` and its effective config → the arguments of ``encode``.

Only what is specific to the wire is checked here: presence, tensor decoding, enum values, the image
rank and size limits. Everything InstaHide's ``encode`` checks itself (batch size, label count and
range, num_classes, k and coefficient bounds, non-finite pixels) is left to it: its
``InvalidInputError`` carries a request field path (``config.k``, ``images.content``…) and reaches the
client through the same error table (errors.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from instahide_client._convert import TensorFormatError, numpy_dtype, to_numpy
from instahide_client.instahide.v1 import tensor_pb2, transform_pb2

from instahide_ops.transforms.instahide.encode import MAX_K, EncodeParams
from instahide_server.errors import InvalidArgument, ResourceExhausted

_IMAGE_DTYPES = (tensor_pb2.DATA_TYPE_UINT8, tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)
_OUTPUT_DTYPES = {
    tensor_pb2.DATA_TYPE_UNSPECIFIED: torch.float32,
    tensor_pb2.DATA_TYPE_FLOAT32: torch.float32,
    tensor_pb2.DATA_TYPE_FLOAT16: torch.float16,
}
_MODES = {
    transform_pb2.ENCODE_MODE_UNSPECIFIED: "cross",
    transform_pb2.ENCODE_MODE_CROSS: "cross",
    transform_pb2.ENCODE_MODE_INSIDE: "inside",
}
# Room for everything in a response besides its tensors' contents (ids, shapes, tags, fingerprint).
_RESPONSE_OVERHEAD_BYTES = 4096


@dataclass(frozen=True)
class Limits:
    """Size limits of one server."""

    max_images_per_request: int
    max_message_bytes: int


@dataclass(frozen=True)
class EncodeJob:
    """A checked request: the arguments of InstaHide's ``encode`` plus what the response needs."""

    images: np.ndarray  # (N, H, W, C) uint8 / float16 / float32, a read-only view of the request
    labels: np.ndarray  # (N,) int64
    num_classes: int
    params: EncodeParams
    seed: int | None
    out_dtype: torch.dtype
    return_keys: bool

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of each image."""
        _, height, width, channels = self.images.shape
        return height, width, channels


def check_request(request: transform_pb2.EncodeRequest, config: transform_pb2.EncodeConfig,
                  limits: Limits) -> EncodeJob:
    """Decode and check one request under its effective config (the stream's latest).

    Raises:
        InvalidArgument: a malformed request; ``field`` names the request field.
        ResourceExhausted: more images than allowed, or a response larger than the message limit.
    """
    if not request.HasField("images"):
        raise InvalidArgument("images: required", "images")
    images = _images(request.images, limits)
    labels = np.fromiter(request.labels, dtype=np.int64, count=len(request.labels))
    if config.output_dtype not in _OUTPUT_DTYPES:
        raise InvalidArgument(f"config.output_dtype: expected DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT16, "
                              f"got {_dtype_name(config.output_dtype)}", "config.output_dtype")
    job = EncodeJob(
        images=images,
        labels=labels,
        num_classes=config.num_classes,
        params=_params(config),
        seed=config.seed if config.HasField("seed") else None,
        out_dtype=_OUTPUT_DTYPES[config.output_dtype],
        return_keys=config.return_keys,
    )
    _check_response_size(job, limits)
    return job


def _images(tensor: tensor_pb2.Tensor, limits: Limits) -> np.ndarray:
    try:
        numpy_dtype(tensor.dtype)
    except TensorFormatError as exc:
        raise InvalidArgument(f"images.dtype: {exc}", "images.dtype") from None
    if tensor.dtype not in _IMAGE_DTYPES:
        raise InvalidArgument(f"images.dtype: expected DATA_TYPE_UINT8, DATA_TYPE_FLOAT16 or "
                              f"DATA_TYPE_FLOAT32, got {_dtype_name(tensor.dtype)}", "images.dtype")
    shape = list(tensor.shape)
    if len(shape) != 4:
        raise InvalidArgument(f"images.shape: expected rank 4 (N, H, W, C), got {shape}", "images.shape")
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


def _params(config: transform_pb2.EncodeConfig) -> EncodeParams:
    mode = _MODES.get(config.mode)
    if mode is None:
        raise InvalidArgument(f"config.mode: unknown mode {config.mode}", "config.mode")
    optional = {name: getattr(config, name)
                for name in ("max_coefficient", "min_private_mass", "sign_flip") if config.HasField(name)}
    return EncodeParams(
        mode=mode,
        k=config.k or None,
        private_per_mix=config.private_per_mix or EncodeParams.private_per_mix,
        **optional,
    )


def _check_response_size(job: EncodeJob, limits: Limits) -> None:
    count, height, width, channels = job.images.shape
    pixels = height * width * channels
    size = count * pixels * job.out_dtype.itemsize + count * job.num_classes * 4
    if job.return_keys:
        k = min(job.params.resolved_k, MAX_K)  # a larger k fails in encode with INVALID_ARGUMENT
        size += count * k * (4 + 8) + count * math.ceil(pixels / 8)
    size += _RESPONSE_OVERHEAD_BYTES
    if size > limits.max_message_bytes:
        raise ResourceExhausted(f"images: the response would take about {size} bytes, more than this "
                                f"server's message limit of {limits.max_message_bytes}; send smaller batches",
                                "images")


def _dtype_name(value: int) -> str:
    return tensor_pb2.DataType.Name(value) if value in tensor_pb2.DataType.values() else str(value)
