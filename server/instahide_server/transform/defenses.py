"""Output defenses on the wire: ``EncodeConfig.output_defense`` → instahide_ops' defenses on a model's outputs →
the defended probabilities in the response's ``encoded``.

The request's ``images`` carry the outputs ((N, C) or (N, C, h, w), float, classes on axis 1); labels are optional
and pass through. The defense's message is read here once, for Encode and for membership audits alike, so what is
audited is what is served.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from instahide_client.instahide.v1 import defenses_pb2, transform_pb2
from instahide_client.tensors import to_tensor

from instahide_ops.errors import InvalidInputError
from instahide_ops.randomness import RandomSource
from instahide_ops.transforms import TransformOutput
from instahide_ops.transforms.defenses import Defense, apply_defense, as_probabilities
from instahide_server.errors import InvalidArgument
from instahide_server.transform.validation import MODEL_OUTPUTS, Batch, Limits, check_response_size

OUTPUT_KINDS = {defenses_pb2.OUTPUT_KIND_UNSPECIFIED: "auto", defenses_pb2.OUTPUT_KIND_LOGITS: "logits",
                defenses_pb2.OUTPUT_KIND_PROBABILITIES: "probabilities"}
_PARAMETERS = {"gaussian": ("gauss", "sigma"), "top_k": ("topk", "k"), "rounding": ("round", "decimals"),
               "temperature": ("temperature", "temperature")}


def defense_from_message(message: defenses_pb2.OutputDefense, *, field: str) -> Defense:
    """The defense a message names; InvalidArgument naming ``field`` (or its parameter) for none or a bad value."""
    member = message.WhichOneof("defense")
    if member is None:
        raise InvalidArgument(f"{field}: required: one of argmax, gaussian, top_k, rounding, temperature", field)
    if member == "argmax":
        return Defense("argmax")
    kind, parameter = _PARAMETERS[member]
    with named(f"{field}.{member}.{parameter}"):
        return Defense(kind, float(getattr(getattr(message, member), parameter)))


def outputs_kind(value: int, *, field: str) -> str:
    """``OutputKind`` as instahide_ops names it; InvalidArgument for an unknown value."""
    if value not in OUTPUT_KINDS:
        raise InvalidArgument(f"{field}: unknown output kind {value}", field)
    return OUTPUT_KINDS[value]


@contextlib.contextmanager
def named(field: str) -> Iterator[None]:
    """instahide_ops' errors about a defense as INVALID_ARGUMENT naming ``field``."""
    try:
        yield
    except InvalidInputError as exc:
        raise InvalidArgument(f"{field}: {exc.reason}", field) from None


@dataclass(frozen=True)
class Plan:
    defense: Defense
    outputs_are: str
    seed: int | None
    labels: np.ndarray  # (N,) int64, or empty when none were sent
    out_dtype: torch.dtype


class OutputDefenseFamily:
    """The adapter of ``families.Family`` for output defenses."""

    field = "output_defense"
    inputs = MODEL_OUTPUTS

    def plan(self, message: defenses_pb2.OutputDefenseConfig, batch: Batch, limits: Limits, *,
             principal: str) -> Plan:
        defense = defense_from_message(message.defense, field="config.output_defense.defense")
        count, classes = batch.images.shape[:2]
        if classes < 2:
            raise InvalidArgument(f"images.shape: outputs over {classes} class; expected at least 2 on axis 1",
                                  "images.shape")
        with named("config.output_defense.defense"):
            defense.check_classes(classes)
        labels = batch.labels
        if len(labels) and len(labels) != count:
            raise InvalidArgument(f"labels: {len(labels)} labels for {count} outputs (one per example, or none)",
                                  "labels")
        if not np.isfinite(batch.images).all():
            raise InvalidArgument("images.content: outputs must be finite (no NaN or Inf)", "images.content")
        check_response_size(batch.images.size * batch.out_dtype.itemsize + len(labels) * 8, limits)
        return Plan(defense, outputs_kind(message.outputs_kind, field="config.output_defense.outputs_kind"),
                    message.seed if message.HasField("seed") else None, labels, batch.out_dtype)

    def encode(self, plan: Plan, images: torch.Tensor, labels: torch.Tensor, *, position: int) -> TransformOutput:
        with named("images"):
            probabilities = as_probabilities(images.float(), plan.outputs_are)
        generator = torch.Generator(device=probabilities.device)
        # Noise from the CSPRNG unless seeded; request i of a seeded stream uses (seed, i).
        generator.manual_seed(int(RandomSource(None if plan.seed is None else (plan.seed, position)).uint64(())))
        defended = apply_defense(probabilities, plan.defense, generator=generator)
        return TransformOutput(defended.to(plan.out_dtype), labels, None, plan.seed is not None)

    def respond(self, plan: Plan, output: TransformOutput, response: transform_pb2.EncodeResponse) -> None:
        response.labels.CopyFrom(to_tensor(plan.labels.astype(np.int64)))
        response.seeded = output.seeded

    def metric_labels(self, plan: Plan) -> dict[str, str]:
        return {"mode": plan.defense.kind}
