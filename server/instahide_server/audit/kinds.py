"""What the audit service needs of each audit kind: the ``AuditSpec.kind`` member that selects it, and an
adapter from its spec and input chunks to an instahide_ops audit and back to its report.

The servicer and the job runner dispatch on the member's name and know nothing else of a kind: a new kind is
one adapter module registered in ``server.build_server``, beside its instahide_ops package and its proto
messages.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from instahide_client.instahide.v1 import audit_pb2

from instahide_ops.audits.progress import CancelToken
from instahide_server.errors import InvalidArgument

DEFAULT_KIND = "reconstruction"  # what a spec without a kind means

ProgressCallback = Callable[[str, float, float], None]
"""(stage, fraction of the stage, fraction of the whole audit), called from the audit's thread."""


@dataclass
class Accepted:
    """A checked spec: the audit's resolved spec (defaults filled in, the attacks that will run named), the
    kind's parameters, and the name of the server-side dataset when the inputs are not uploaded."""

    spec: audit_pb2.AuditSpec
    params: Any
    dataset: str = ""


class Upload(Protocol):
    """The input chunks of one StartAudit stream, checked as they arrive."""

    def add(self, chunk: Any) -> None:
        """Take one chunk (the kind's member of ``StartAuditRequest.chunk``); raise a domain error for a bad one."""
        ...

    def finish(self) -> Any:
        """The checked inputs once the client half-closes."""
        ...


class AuditKind(Protocol):
    """One audit kind on the wire.

    Class attributes:
        field: its member of ``AuditSpec.kind``, ``StartAuditRequest.chunk`` and ``AuditReport.kind``.
    """

    field: ClassVar[str]

    def accept(self, spec: audit_pb2.AuditSpec) -> Accepted:
        """Check the spec (its kind's part and the attacks it names) and resolve its defaults."""
        ...

    def upload(self, accepted: Accepted, *, max_images: int) -> Upload:
        """A fresh upload for this audit's chunks."""
        ...

    def read_dataset(self, path: pathlib.Path, accepted: Accepted, *, max_images: int) -> Any:
        """The inputs from a server-side file (blocking); InvalidArgument for one that is not of this kind."""
        ...

    def prepare(self, accepted: Accepted, inputs: Any) -> None:
        """Checks that need the inputs and may block (e.g. building a public pool), before the audit is queued."""
        ...

    def describe(self, accepted: Accepted, inputs: Any) -> str:
        """A few words for the log: sizes and parameters, nothing private."""
        ...

    def run(self, accepted: Accepted, inputs: Any, *, progress: ProgressCallback,
            cancel: CancelToken) -> audit_pb2.AuditReport:
        """Run the audit (blocking, in a worker thread) and return its report."""
        ...


def kind_of(spec: audit_pb2.AuditSpec, kinds: dict[str, AuditKind]) -> AuditKind:
    """The kind a spec selects (``DEFAULT_KIND`` when it names none)."""
    member = spec.WhichOneof("kind") or DEFAULT_KIND
    kind = kinds.get(member)
    if kind is None:
        raise InvalidArgument(f"spec.kind: {member!r} audits are not run here; this server runs {sorted(kinds)}",
                              "spec.kind")
    return kind
