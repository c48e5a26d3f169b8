"""Python client for the instahide service: privacy transforms (InstaHide; DisguisedNets under stored keys) and
leakage audits over gRPC, no torch needed.

Examples:
    >>> from instahide_client import InstaHideClient
    >>> with InstaHideClient("127.0.0.1:50051") as client:  # doctest: +SKIP
    ...     out = client.encode(images, labels, return_keys=True)
    ...     audit = client.wait_audit(client.start_audit(images, labels, seed=1).name)
    ...     audit.report.write("report/")

The torch data pipeline lives in ``instahide_client.torch_data``, and a membership audit's arrays from a torch
model in ``instahide_client.torch_outputs`` (the ``[torch]`` extra); neither is imported here.
"""

from importlib import metadata as _metadata

from instahide_client._requests import encode_config
from instahide_client._stream import EncodeStream
from instahide_client._types import EncodeBatch, EncodedBatch, EncodeOutput, KeyRecord
from instahide_client.audits import (
    AttackResult,
    AttackScores,
    Audit,
    AuditEvent,
    AuditProgress,
    AuditReport,
    AuditSpec,
)
from instahide_client.client import InstaHideClient
from instahide_client.errors import InstaHideError
from instahide_client.keys import StoredKey

try:
    __version__ = _metadata.version("instahide-client")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AttackResult",
    "AttackScores",
    "Audit",
    "AuditEvent",
    "AuditProgress",
    "AuditReport",
    "AuditSpec",
    "EncodeBatch",
    "EncodeOutput",
    "EncodeStream",
    "EncodedBatch",
    "InstaHideClient",
    "InstaHideError",
    "KeyRecord",
    "StoredKey",
    "__version__",
    "encode_config",
]
