"""How the service runs each transform family: the ``EncodeConfig.transform`` member that selects it, and an
adapter from that message to instahide_ops' registered transform and back to the response.

The encoder (encoder.py) dispatches on the member's name; a new family is one adapter module registered
here, beside its ``instahide_ops.transforms`` entry and its proto message.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from google.protobuf.message import Message
from instahide_client.instahide.v1 import transform_pb2

from instahide_ops.transforms import TransformOutput
from instahide_server.errors import InvalidArgument
from instahide_server.transform.validation import Batch, InputSpec, Limits

DEFAULT_FAMILY = "instahide"  # what a config without a transform means


class Family(Protocol):
    """One family on the wire.

    Class attributes:
        field: its member of ``EncodeConfig.transform`` (also its ``instahide_ops.transforms`` name and the
            ``family`` label of the metrics).
        inputs: what it takes in a request's ``images`` (``validation.IMAGES`` for the image families).
    """

    field: ClassVar[str]
    inputs: ClassVar[InputSpec]

    def plan(self, message: Message, batch: Batch, limits: Limits, *, principal: str) -> Any:
        """Check the family's config (``message``) against the batch, before any device work; the plan is what
        ``encode`` and ``respond`` take. ``principal`` is the caller (whose keys a family with stored keys may
        use). Raises a domain error naming the field."""
        ...

    def encode(self, plan: Any, images: torch.Tensor, labels: torch.Tensor, *, position: int) -> TransformOutput:
        """Disguise the batch (blocking); ``position`` counts the stream's requests under this config."""
        ...

    def respond(self, plan: Any, output: TransformOutput, response: transform_pb2.EncodeResponse) -> None:
        """Fill the response's labels, keys (when asked) and ``seeded``."""
        ...

    def metric_labels(self, plan: Any) -> dict[str, str]:
        """Labels beside ``family`` for the images-encoded counter (small, fixed sets of values)."""
        ...


def family_of(config: transform_pb2.EncodeConfig, families: dict[str, Family]) -> tuple[Family, Message]:
    """The family a config selects and its message (the default family's empty message when none is set)."""
    member = config.WhichOneof("transform") or DEFAULT_FAMILY
    family = families.get(member)
    if family is None:
        raise InvalidArgument(f"config.transform: {member!r} is not served here; this server serves "
                              f"{sorted(families)}", "config.transform")
    return family, getattr(config, member)
