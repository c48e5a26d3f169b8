"""One request, start to finish, in an encoding thread: check, encode with the config's family, serialize.

Everything here is blocking (numpy, torch, protobuf) and runs in the server's thread pool, so the event loop
only moves bytes. torch releases the GIL inside its kernels, so threads overlap. torch's own intra-op thread
count is left at its default (one per core): on a CPU device, ``--workers`` W then means up to W × cores busy
threads, which can oversubscribe a small machine (try ``--workers 1`` there); on a GPU the threads mostly wait
for the device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from instahide_client.instahide.v1 import transform_pb2

from instahide_server.errors import REQUEST_ERRORS, ResourceExhausted, Status, status_of
from instahide_server.metrics import ServerMetrics
from instahide_server.transform import wire
from instahide_server.transform.families import Family, family_of
from instahide_server.transform.validation import Limits, check_batch

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {np.dtype("u1"): torch.uint8, np.dtype("<f2"): torch.float16, np.dtype("<f4"): torch.float32}


@dataclass(frozen=True)
class Outcome:
    """A serialized response and what the access log counts about it."""

    payload: bytes
    images: int
    error: Status | None = None


class BatchEncoder:
    """Turns a request and its effective config into a serialized response, with the config's family."""

    def __init__(self, *, device: torch.device, families: Iterable[Family], limits: Limits,
                 metrics: ServerMetrics | None = None) -> None:
        self._device = device
        self._families = {family.field: family for family in families}
        self._limits = limits
        self._metrics = metrics if metrics is not None else ServerMetrics()  # unexported when not given

    def run(self, request: transform_pb2.EncodeRequest, config: transform_pb2.EncodeConfig,
            position: int = 0, principal: str = "") -> Outcome:
        """Encode one request; a request the service refuses is answered with an error, not raised.

        ``position`` counts the stream's requests under ``config``: a seeded config gives request i the keys of
        (seed, i), so a seeded stream never repeats keys. Anything unexpected propagates (and ends the stream
        with INTERNAL). ``principal`` is the caller (auth.Principals), whose stored keys the config may name.
        """
        metrics = self._metrics
        started = time.perf_counter()
        metrics.encode_bytes_received.inc(request.ByteSize())
        try:
            family, message = family_of(config, self._families)
            batch = check_batch(request, config, self._limits, family.inputs)
            plan = family.plan(message, batch, self._limits, principal=principal)
            try:
                images = _to_device(batch.images, self._device)
                labels = torch.from_numpy(batch.labels).to(self._device)
                output = family.encode(plan, images, labels, position=position)
            except torch.OutOfMemoryError:
                raise ResourceExhausted("images: the device ran out of memory encoding this batch; "
                                        "send smaller batches", "images") from None
        except REQUEST_ERRORS as exc:
            status = status_of(exc)
            assert status is not None
            logger.info("request %r refused: %s %s", request.request_id[:64], status.code.name, status.message)
            metrics.encode_request_errors.labels(code=status.code.name, field=field_label(status.field)).inc()
            outcome = Outcome(wire.error_response(request.request_id, status), 0, status)
        else:
            rest = transform_pb2.EncodeResponse()
            family.respond(plan, output, rest)
            outcome = Outcome(wire.encode_response(request.request_id, output.encoded.cpu().numpy(), rest),
                              batch.images.shape[0])
            metrics.images_encoded.labels(family=family.field, **family.metric_labels(plan)).inc(outcome.images)
            if output.seeded:
                metrics.seeded_batches.inc()
            metrics.encode_batch_seconds.observe(time.perf_counter() - started)
        metrics.encode_bytes_sent.inc(len(outcome.payload))
        return outcome


def field_label(field: str) -> str:
    """A request field path as a metric label: indexes dropped ("labels[3]" -> "labels"), so the label's values
    stay the small, fixed set of the request's fields."""
    return field.split("[", 1)[0][:64] or "none"


def _to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy the request's read-only image bytes into a tensor on ``device``.

    The one copy gives torch memory it owns (the request's bytes are immutable); on CUDA it goes through pinned
    memory so the upload can run asynchronously.
    """
    pinned = device.type == "cuda"
    host = torch.empty(images.shape, dtype=_TORCH_DTYPES[images.dtype], pin_memory=pinned)
    host.numpy()[...] = images
    return host.to(device, non_blocking=True) if pinned else host
