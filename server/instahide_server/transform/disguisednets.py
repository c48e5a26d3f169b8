"""DisguisedNets on the Encode stream: ``DisguisedNetsConfig`` names a stored key (``keys/{key}``); the batch is
disguised under it and its labels pass through. The method and matrix names of the wire live here, once (the key
service reads them too)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from instahide_client.instahide.v1 import disguisednets_pb2, transform_pb2
from instahide_client.tensors import to_tensor

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms import TransformOutput, get_transform
from instahide_ops.transforms.disguisednets import DisguisedNetsKey, DisguisedNetsParams
from instahide_server.errors import InvalidArgument
from instahide_server.keys.store import KeyStore
from instahide_server.transform.validation import IMAGES, Batch, Limits, check_response_size

pb = disguisednets_pb2
METHODS = {pb.DISGUISE_METHOD_UNSPECIFIED: "rmt", pb.DISGUISE_METHOD_RMT: "rmt", pb.DISGUISE_METHOD_AES: "aes"}
METHOD_VALUES = {"rmt": pb.DISGUISE_METHOD_RMT, "aes": pb.DISGUISE_METHOD_AES}
MATRICES = {pb.PROJECTION_MATRIX_UNSPECIFIED: "orthogonal", pb.PROJECTION_MATRIX_ORTHOGONAL: "orthogonal",
            pb.PROJECTION_MATRIX_GAUSSIAN: "gaussian", pb.PROJECTION_MATRIX_UNIFORM: "uniform"}
MATRIX_VALUES = {"orthogonal": pb.PROJECTION_MATRIX_ORTHOGONAL, "gaussian": pb.PROJECTION_MATRIX_GAUSSIAN,
                 "uniform": pb.PROJECTION_MATRIX_UNIFORM}
DEFAULT_BLOCK = DisguisedNetsParams.block[0]
# instahide_ops' parameter names → the message's fields
_PARAM_FIELDS = {"block": "block_rows", "method": "method", "matrix": "matrix", "noise": "noise", "scale": "scale",
                 "salt_pepper": "salt_pepper"}


def params_from_message(message: pb.DisguisedNetsParams, *, field: str) -> DisguisedNetsParams:
    """The parameters from their message (defaults where unset); ``field`` prefixes what is named.

    Raises:
        InvalidArgument: an unknown enum value.
    """
    if message.method not in METHODS:
        raise InvalidArgument(f"{field}.method: unknown method {message.method}", f"{field}.method")
    if message.matrix not in MATRICES:
        raise InvalidArgument(f"{field}.matrix: unknown matrix {message.matrix}", f"{field}.matrix")
    rows = message.block_rows or DEFAULT_BLOCK
    return DisguisedNetsParams(
        method=METHODS[message.method], block=(rows, message.block_cols or rows),
        permute=message.permute if message.HasField("permute") else True, matrix=MATRICES[message.matrix],
        noise=float(message.noise), matrix_per_channel=message.matrix_per_channel,
        aes_key_per_block=message.aes_key_per_block, scale=message.scale or 1, salt_pepper=float(message.salt_pepper))


def params_message(params: DisguisedNetsParams) -> pb.DisguisedNetsParams:
    """The message of ``params``, every default filled in."""
    return pb.DisguisedNetsParams(
        method=METHOD_VALUES[params.method], block_rows=params.block[0], block_cols=params.block[1],
        permute=params.permute, matrix=MATRIX_VALUES[params.matrix], noise=params.noise,
        matrix_per_channel=params.matrix_per_channel, aes_key_per_block=params.aes_key_per_block,
        scale=params.scale, salt_pepper=params.salt_pepper)


@contextlib.contextmanager
def param_fields(prefix: str) -> Iterator[None]:
    """instahide_ops names a key's parameters ``block``, ``noise``…; on the wire they sit in ``prefix``."""
    try:
        yield
    except InvalidInputError as exc:
        if exc.field == "shape":
            raise InvalidArgument(f"image_shape: {exc.reason}", "image_shape") from None
        if exc.field not in _PARAM_FIELDS:
            raise
        field = f"{prefix}.{_PARAM_FIELDS[exc.field]}"
        raise InvalidArgument(f"{field}: {exc.reason}", field) from None


@dataclass(frozen=True)
class Plan:
    """A checked DisguisedNets request: its key and labels."""

    key: DisguisedNetsKey
    labels: np.ndarray  # (N,) int64, or empty when none were sent
    out_dtype: torch.dtype


class DisguisedNetsFamily:
    """The adapter of ``families.Family`` for DisguisedNets; keys come from the server's key store."""

    field = "disguised_nets"
    inputs = IMAGES

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys
        self._transform = get_transform(self.field)

    def plan(self, message: pb.DisguisedNetsConfig, batch: Batch, limits: Limits, *, principal: str) -> Plan:
        field = "config.disguised_nets.key"
        if not message.key:
            raise InvalidArgument(f"{field}: required: the key to disguise with, \"keys/{{key}}\" "
                                  "(KeyService.CreateKey makes one)", field)
        key = self._keys.key(message.key, principal, field=field)
        if batch.image_shape != key.image_shape:
            raise InvalidArgument(f"images.shape: the key {message.key} disguises images of "
                                  f"{list(key.image_shape)}, got {list(batch.images.shape)}", "images.shape")
        count = batch.images.shape[0]
        labels = batch.labels
        if len(labels) and len(labels) != count:
            raise InvalidArgument(f"labels: {len(labels)} labels for {count} images (DisguisedNets takes one per "
                                  "image, or none)", "labels")
        if len(labels) and int(labels.min()) < 0:
            raise InvalidArgument(f"labels: must be non-negative, got {int(labels.min())}", "labels")
        itemsize = 1 if key.params.method == "aes" else batch.out_dtype.itemsize
        pixels = int(np.prod(key.image_shape))
        check_response_size(count * pixels * itemsize + len(labels) * 8, limits)
        return Plan(key, labels, batch.out_dtype)

    def encode(self, plan: Plan, images: torch.Tensor, labels: torch.Tensor, *, position: int) -> TransformOutput:
        # Labels pass through untouched, so the transform is given one class: no one-hot of arbitrary labels.
        zeros = torch.zeros(len(images), dtype=torch.int64, device=images.device)
        return self._transform.encode(images, zeros, plan.key.params, num_classes=1, resources=plan.key,
                                      out_dtype=plan.out_dtype)

    def respond(self, plan: Plan, output: TransformOutput, response: transform_pb2.EncodeResponse) -> None:
        response.labels.CopyFrom(to_tensor(plan.labels.astype(np.int64)))
        response.seeded = output.seeded

    def metric_labels(self, plan: Plan) -> dict[str, str]:
        return {"mode": plan.key.params.method}
