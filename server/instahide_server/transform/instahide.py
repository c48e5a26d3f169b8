"""InstaHide on the Encode stream: ``InstaHideConfig`` → ``EncodeParams`` and the public pool, and the one-time
keys back as ``InstaHideKeys``. The mode names of the wire live here, once (the audits read them too)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from instahide_client.instahide.v1 import instahide_pb2, transform_pb2
from instahide_client.tensors import to_tensor

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms import TransformOutput, get_transform
from instahide_ops.transforms.instahide import needs_pool
from instahide_ops.transforms.instahide.encode import MAX_K, EncodeParams
from instahide_ops.transforms.instahide.keys import EncodeKeys
from instahide_ops.transforms.instahide.pool import PublicPool
from instahide_server.errors import InvalidArgument
from instahide_server.transform.pools import PoolRegistry
from instahide_server.transform.validation import IMAGES, Batch, Limits, check_response_size

MODES = {
    instahide_pb2.MIXING_MODE_UNSPECIFIED: "cross",
    instahide_pb2.MIXING_MODE_CROSS: "cross",
    instahide_pb2.MIXING_MODE_INSIDE: "inside",
}
MODE_VALUES = {"cross": instahide_pb2.MIXING_MODE_CROSS, "inside": instahide_pb2.MIXING_MODE_INSIDE}


def encode_params(config: instahide_pb2.InstaHideConfig, *, field: str) -> EncodeParams:
    """The encoding's parameters from their message (defaults where unset). ``field`` prefixes what is named.

    Raises:
        InvalidArgument: an unknown mode.
    """
    mode = MODES.get(config.mode)
    if mode is None:
        raise InvalidArgument(f"{field}.mode: unknown mode {config.mode}", f"{field}.mode")
    optional = {name: getattr(config, name)
                for name in ("max_coefficient", "min_private_mass", "sign_flip") if config.HasField(name)}
    return EncodeParams(mode=mode, k=config.k or None,
                        private_per_mix=config.private_per_mix or EncodeParams.private_per_mix, **optional)


@dataclass(frozen=True)
class Plan:
    """A checked InstaHide request."""

    params: EncodeParams
    num_classes: int
    seed: int | None
    return_keys: bool
    pool: PublicPool | None
    out_dtype: torch.dtype


class InstaHideFamily:
    """The adapter of ``families.Family`` for InstaHide; its pools come from the server's ``PoolRegistry``."""

    field = "instahide"
    inputs = IMAGES

    def __init__(self, pools: PoolRegistry) -> None:
        self._pools = pools
        self._transform = get_transform(self.field)

    def plan(self, message: instahide_pb2.InstaHideConfig, batch: Batch, limits: Limits, *,
             principal: str = "") -> Plan:  # one-time keys: the caller changes nothing
        with _config_fields():
            return self._plan(message, batch, limits)

    def _plan(self, message: instahide_pb2.InstaHideConfig, batch: Batch, limits: Limits) -> Plan:
        params = encode_params(message, field="config.instahide")
        count, height, width, channels = batch.images.shape
        pixels = height * width * channels
        size = count * pixels * batch.out_dtype.itemsize + count * message.num_classes * 4
        if message.return_keys:
            k = min(params.resolved_k, MAX_K)  # a larger k fails in encode with INVALID_ARGUMENT
            size += count * k * (4 + 8) + count * math.ceil(pixels / 8)
        check_response_size(size, limits)
        params.validate()  # before a pool is built for parameters encode would refuse
        pool = self._pools.get(batch.image_shape) if needs_pool(params) else None
        return Plan(params, message.num_classes, message.seed if message.HasField("seed") else None,
                    message.return_keys, pool, batch.out_dtype)

    def encode(self, plan: Plan, images: torch.Tensor, labels: torch.Tensor, *, position: int) -> TransformOutput:
        with _config_fields():
            return self._transform.encode(images, labels, plan.params, num_classes=plan.num_classes,
                                          resources=plan.pool, out_dtype=plan.out_dtype,
                                          seed=None if plan.seed is None else (plan.seed, position))

    def respond(self, plan: Plan, output: TransformOutput, response: transform_pb2.EncodeResponse) -> None:
        response.labels.CopyFrom(to_tensor(output.labels.cpu().numpy()))
        response.seeded = output.seeded
        if plan.return_keys:
            keys_message(output.keys, response.instahide_keys)

    def metric_labels(self, plan: Plan) -> dict[str, str]:
        return {"mode": plan.params.mode}


@contextlib.contextmanager
def _config_fields() -> Iterator[None]:
    """instahide_ops names InstaHide's parameters ``config.k``; on the wire they sit in ``config.instahide``."""
    try:
        yield
    except InvalidInputError as exc:
        if not exc.field.startswith("config."):
            raise
        field = "config.instahide." + exc.field.removeprefix("config.")
        raise InvalidArgument(f"{field}: {exc.reason}", field) from None


def keys_message(keys: EncodeKeys, record: instahide_pb2.InstaHideKeys) -> None:
    """Write one batch's keys into ``record``."""
    record.mode = MODE_VALUES[keys.mode]
    record.k = keys.k
    record.private_per_mix = keys.private_per_mix
    record.coefficients.CopyFrom(to_tensor(keys.coefficients.numpy()))
    record.indices.CopyFrom(to_tensor(keys.indices.numpy()))
    if keys.mask_bits is not None:  # left unset without sign flip
        record.mask_bits.CopyFrom(to_tensor(keys.mask_bits.numpy()))
    record.seeded = keys.seeded
    record.pool_fingerprint = keys.pool_fingerprint
