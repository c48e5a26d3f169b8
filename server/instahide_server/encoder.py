"""One request, start to finish, in an encoding thread: check, encode, serialize.

Everything here is blocking (numpy, torch, protobuf) and runs in the server's thread pool, so the
event loop only moves bytes. torch releases the GIL inside its kernels, so threads overlap. torch's
own intra-op thread count is left at its default (one per core): on a CPU device, ``--workers`` W
then means up to W × cores busy threads, which can oversubscribe a small machine (try
``--workers 1`` there); on a GPU the threads mostly wait for the device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from instahide_client._convert import to_tensor
from instahide_client.instahide.v1 import transform_pb2

from instahide_ops.transforms.instahide.encode import EncodeResult, encode
from instahide_server import wire
from instahide_server.errors import REQUEST_ERRORS, ResourceExhausted, Status, status_of
from instahide_server.metrics import ServerMetrics
from instahide_server.pools import PoolRegistry
from instahide_server.validation import EncodeJob, Limits, check_request

logger = logging.getLogger(__name__)

_MODES = {"cross": transform_pb2.ENCODE_MODE_CROSS, "inside": transform_pb2.ENCODE_MODE_INSIDE}
_TORCH_DTYPES = {np.dtype("u1"): torch.uint8, np.dtype("<f2"): torch.float16, np.dtype("<f4"): torch.float32}


@dataclass(frozen=True)
class Outcome:
    """A serialized response and what the access log counts about it."""

    payload: bytes
    images: int
    error: Status | None = None


class BatchEncoder:
    """Turns a request and its effective config into a serialized response."""

    def __init__(self, *, device: torch.device, pools: PoolRegistry, limits: Limits,
                 metrics: ServerMetrics | None = None) -> None:
        self._device = device
        self._pools = pools
        self._limits = limits
        self._metrics = metrics if metrics is not None else ServerMetrics()  # unexported when not given

    def run(self, request: transform_pb2.EncodeRequest, config: transform_pb2.EncodeConfig,
            position: int = 0) -> Outcome:
        """Encode one request; a request the service refuses is answered with an error, not raised.

        ``position`` counts the stream's requests under ``config``: a seeded config gives request i
        the keys of (seed, i), so a seeded stream never repeats keys. Anything unexpected propagates
        (and ends the stream with INTERNAL).
        """
        metrics = self._metrics
        started = time.perf_counter()
        metrics.encode_bytes_received.inc(request.ByteSize())
        try:
            job = check_request(request, config, self._limits)
            result = self._encode(job, position)
        except REQUEST_ERRORS as exc:
            status = status_of(exc)
            assert status is not None
            logger.info("request %r refused: %s %s", request.request_id[:64], status.code.name,
                        status.message)
            outcome = Outcome(wire.error_response(request.request_id, status), 0, status)
        else:
            outcome = Outcome(self._response(request.request_id, job, result), job.images.shape[0])
            metrics.images_encoded.labels(job.params.mode).inc(outcome.images)
            if job.seed is not None:
                metrics.seeded_batches.inc()
            metrics.encode_batch_seconds.observe(time.perf_counter() - started)
        metrics.encode_bytes_sent.inc(len(outcome.payload))
        return outcome

    def _encode(self, job: EncodeJob, position: int) -> EncodeResult:
        job.params.validate()  # before a pool is built for parameters encode would refuse
        pool = self._pools.get(job.image_shape) if _needs_pool(job) else None
        try:
            images = _to_device(job.images, self._device)
            labels = torch.from_numpy(job.labels).to(self._device)
            return encode(images, labels, num_classes=job.num_classes, params=job.params, pool=pool,
                          seed=None if job.seed is None else (job.seed, position),
                          out_dtype=job.out_dtype)
        except torch.OutOfMemoryError:
            raise ResourceExhausted("images: the device ran out of memory encoding this batch; "
                                    "send smaller batches", "images") from None

    @staticmethod
    def _response(request_id: str, job: EncodeJob, result: EncodeResult) -> bytes:
        keys = result.keys
        rest = transform_pb2.EncodeResponse(mixed_labels=to_tensor(result.mixed_labels.cpu().numpy()),
                                            seeded=keys.seeded)
        if job.return_keys:
            record = rest.keys
            record.mode = _MODES[keys.mode]
            record.k = keys.k
            record.private_per_mix = keys.private_per_mix
            record.coefficients.CopyFrom(to_tensor(keys.coefficients.numpy()))
            record.indices.CopyFrom(to_tensor(keys.indices.numpy()))
            if keys.mask_bits is not None:  # left unset without sign flip
                record.mask_bits.CopyFrom(to_tensor(keys.mask_bits.numpy()))
            record.seeded = keys.seeded
            record.pool_fingerprint = keys.pool_fingerprint
        return wire.encode_response(request_id, result.encoded.cpu().numpy(), rest)


def _needs_pool(job: EncodeJob) -> bool:
    """Cross mode with public slots."""
    return job.params.mode == "cross" and job.params.resolved_k > job.params.private_per_mix


def _to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy the request's read-only image bytes into a tensor on ``device``.

    The one copy gives torch memory it owns (the request's bytes are immutable); on CUDA it goes
    through pinned memory so the upload can run asynchronously.
    """
    pinned = device.type == "cuda"
    host = torch.empty(images.shape, dtype=_TORCH_DTYPES[images.dtype], pin_memory=pinned)
    host.numpy()[...] = images
    return host.to(device, non_blocking=True) if pinned else host
