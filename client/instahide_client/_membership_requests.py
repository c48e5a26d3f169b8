"""Building a membership audit's StartAudit stream: the spec from keyword options, input checks, then chunks of
examples (outputs, labels, memberships, and the reference models' columns for the same examples)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from instahide_client._audit_requests import _names, chunk_rows
from instahide_client.defenses import defense_message, outputs_kind
from instahide_client.instahide.v1 import audit_pb2, membership_pb2
from instahide_client.tensors import to_tensor

_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass(frozen=True)
class MembershipUpload:
    """Checked inputs of one membership StartAudit call: the spec and the arrays to stream after it."""

    spec: audit_pb2.AuditSpec
    outputs: np.ndarray | None = None
    labels: np.ndarray | None = None
    member: np.ndarray | None = None
    reference_outputs: np.ndarray | None = None
    reference_member: np.ndarray | None = None


def membership_spec(*, defenses: Sequence[Any] = (), outputs_kind_name: str = "auto", ignore_index: int | None = None,
                    seed: int | None = None, attacks: Sequence[str] = (), extra_attacks: Sequence[str] = (),
                    skipped_attacks: Sequence[str] = (), dataset: str | None = None,
                    display_name: str = "") -> audit_pb2.AuditSpec:
    """The ``AuditSpec`` of a membership audit (None and empty: the service's defaults).

    Examples:
        >>> membership_spec(defenses=["argmax"]).membership.defenses[0].WhichOneof("defense")
        'argmax'
    """
    spec = membership_pb2.MembershipSpec(outputs_kind=outputs_kind(outputs_kind_name),
                                         defenses=[defense_message(d) for d in defenses])
    if ignore_index is not None:
        spec.ignore_index = int(ignore_index)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        spec.seed = int(seed)
    return audit_pb2.AuditSpec(dataset=dataset or "", display_name=display_name, attacks=_names("attacks", attacks),
                               extra_attacks=_names("extra_attacks", extra_attacks),
                               skipped_attacks=_names("skipped_attacks", skipped_attacks), membership=spec)


def check_membership_inputs(outputs: Any = None, labels: Any = None, member: Any = None, *,
                            reference_outputs: Any = None, reference_member: Any = None, dataset: str | None = None,
                            **spec_options: Any) -> MembershipUpload:
    """Check what :meth:`InstaHideClient.start_membership_audit` was given, before anything is sent.

    Raises:
        ValueError: a missing or extra source, a wrong rank, dtype or length.
    """
    given = {name: value for name, value in (("outputs", outputs), ("labels", labels), ("member", member),
                                             ("reference_outputs", reference_outputs),
                                             ("reference_member", reference_member)) if value is not None}
    spec = membership_spec(dataset=dataset, **spec_options)
    if dataset:
        if given:
            raise ValueError(f"dataset={dataset!r} names a server-side dataset; do not also pass {', '.join(given)}")
        return MembershipUpload(spec)
    if outputs is None or labels is None or member is None:
        raise ValueError("pass outputs, labels and member (or a server-side dataset)")
    outputs, labels, member = np.asarray(outputs), np.asarray(labels), np.asarray(member)
    if outputs.ndim not in (2, 4) or outputs.dtype not in _FLOATS:
        raise ValueError(f"outputs must be float32 or float16 (N, C) or (N, C, h, w), got {outputs.dtype} "
                         f"{outputs.shape}")
    n = len(outputs)
    expected = (n,) if outputs.ndim == 2 else (n, *outputs.shape[2:])
    if labels.shape != expected or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape {expected}, got {labels.dtype} {labels.shape}")
    if member.shape != (n,) or member.dtype.kind not in "bui":
        raise ValueError(f"member must be (N,) = ({n},) booleans, got {member.dtype} {member.shape}")
    if (reference_outputs is None) != (reference_member is None):
        raise ValueError("reference_outputs and reference_member go together")
    if reference_outputs is not None:
        reference_outputs, reference_member = np.asarray(reference_outputs), np.asarray(reference_member)
        if reference_outputs.ndim != outputs.ndim + 1 or reference_outputs.shape[1:] != outputs.shape \
                or reference_outputs.dtype not in _FLOATS:
            raise ValueError(f"reference_outputs must be float (K, {', '.join(map(str, outputs.shape))}), got "
                             f"{reference_outputs.dtype} {reference_outputs.shape}")
        if reference_member.shape != reference_outputs.shape[:2]:
            raise ValueError(f"reference_member must be (K, N) = {reference_outputs.shape[:2]}, got "
                             f"{reference_member.shape}")
        reference_member = reference_member.astype(np.uint8)
    return MembershipUpload(spec, outputs, labels.astype(np.int64, copy=False), member.astype(bool),
                            reference_outputs, reference_member)


def membership_requests(upload: MembershipUpload, *, chunk_examples: int = 1024,
                        max_message_bytes: int = 64 * 2**20) -> Iterator[audit_pb2.StartAuditRequest]:
    """The StartAudit stream: the spec, then the examples in chunks that fit a message."""
    rows = 0
    if upload.outputs is not None:
        row_bytes = math.prod(upload.outputs.shape[1:]) * upload.outputs.itemsize
        row_bytes += 8 * math.prod(upload.labels.shape[1:]) + 2
        if upload.reference_outputs is not None:
            row_bytes += len(upload.reference_outputs) * (row_bytes + 1)
        rows = chunk_rows(row_bytes, chunk_examples, max_message_bytes)
    return _requests(upload, rows)


def _requests(upload: MembershipUpload, rows: int) -> Iterator[audit_pb2.StartAuditRequest]:
    yield audit_pb2.StartAuditRequest(spec=upload.spec)
    if upload.outputs is None:
        return
    for start in range(0, len(upload.outputs), rows):
        part = slice(start, start + rows)
        chunk = membership_pb2.MembershipChunk(outputs=to_tensor(upload.outputs[part]),
                                               labels=to_tensor(upload.labels[part]),
                                               member=upload.member[part].tolist())
        if upload.reference_outputs is not None:
            chunk.reference_outputs.CopyFrom(to_tensor(np.ascontiguousarray(upload.reference_outputs[:, part])))
            chunk.reference_member.CopyFrom(to_tensor(np.ascontiguousarray(upload.reference_member[:, part])))
        yield audit_pb2.StartAuditRequest(membership=chunk)
