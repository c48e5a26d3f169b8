"""What the client sends and returns: plain dataclasses of numpy arrays."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from instahide_client.errors import InstaHideError, status_code
from instahide_client.instahide.v1 import instahide_pb2, transform_pb2
from instahide_client.tensors import optional_numpy, to_numpy

MODES: dict[str, int] = {"cross": instahide_pb2.MIXING_MODE_CROSS, "inside": instahide_pb2.MIXING_MODE_INSIDE}
"""InstaHide's mixing modes by name, as the API's ``MixingMode`` values (the one table the client keeps)."""
MODE_NAMES: dict[int, str] = {value: name for name, value in MODES.items()} | {
    instahide_pb2.MIXING_MODE_UNSPECIFIED: "cross"}


@dataclass(frozen=True)
class EncodeBatch:
    """One batch to encode.

    Attributes:
        images: (N, H, W, C) uint8 in [0, 255], or float32 / float16 already in [-1, 1].
        labels: (N,) integer class labels in [0, num_classes); for a stored key's encoding, optional (None).
        request_id: echoed in the result; None lets the stream number the batches "0", "1", ...
    """

    images: np.ndarray
    labels: np.ndarray | None
    request_id: str | None = None


@dataclass(frozen=True)
class KeyRecord:
    """The keys of an encoding: enough to recompute it from the private images and the public pool.

    ``encoded[i] = signs[i] * sum_j coefficients[i, j] * x[indices[i, j]]`` on images scaled to
    [-1, 1], where slots ``j < private_per_mix`` index the private images (slot 0 is image ``i``
    itself) and the other slots index the service's public pool (``pool_fingerprint``).

    Attributes:
        coefficients: (N, k) float32, each row summing to 1.
        indices: (N, k) int64. In a per-batch record private slots index the batch; in the record
            of :meth:`InstaHideClient.encode` they index the whole ``images`` array.
        mask_bits: (N, ceil(H*W*C / 8)) uint8, little-endian bit order, bit 1 = sign flipped;
            None without sign flip.
        mode: "cross" or "inside".
        k: images mixed per encoding.
        private_per_mix: private images per encoding (k in inside mode).
        seeded: True when the keys came from an explicit seed rather than the CSPRNG.
        pool_fingerprint: SHA-256 (hex) of the public pool the public slots index.
    """

    coefficients: np.ndarray
    indices: np.ndarray
    mask_bits: np.ndarray | None
    mode: str
    k: int
    private_per_mix: int
    seeded: bool
    pool_fingerprint: str

    @classmethod
    def from_proto(cls, msg: instahide_pb2.InstaHideKeys) -> KeyRecord:
        mask_bits = optional_numpy(msg, "mask_bits")
        return cls(
            coefficients=to_numpy(msg.coefficients),
            indices=to_numpy(msg.indices),
            mask_bits=mask_bits,
            mode=MODE_NAMES.get(msg.mode, str(msg.mode)),
            k=int(msg.k),
            private_per_mix=int(msg.private_per_mix),
            seeded=bool(msg.seeded),
            pool_fingerprint=msg.pool_fingerprint,
        )

    def signs(self, image_shape: Sequence[int]) -> np.ndarray:
        """The ±1 sign mask, float32 (N, *image_shape) (all ones without sign flip)."""
        count = math.prod(image_shape)
        n = self.coefficients.shape[0]
        if self.mask_bits is None:
            return np.ones((n, *image_shape), dtype=np.float32)
        bits = np.unpackbits(self.mask_bits, axis=1, count=count, bitorder="little")
        return (1.0 - 2.0 * bits.astype(np.float32)).reshape(n, *image_shape)

    def arrays(self, prefix: str = "keys_") -> dict[str, np.ndarray]:
        """The record as named arrays (the ``out.npz`` layout of ``instahide encode --return-keys``).

        Scalars are 0-d arrays; ``mask_bits`` is left out when there is no sign flip.
        """
        out = {
            f"{prefix}coefficients": self.coefficients,
            f"{prefix}indices": self.indices,
            f"{prefix}mode": np.array(self.mode),
            f"{prefix}k": np.array(self.k, dtype=np.int64),
            f"{prefix}private_per_mix": np.array(self.private_per_mix, dtype=np.int64),
            f"{prefix}seeded": np.array(self.seeded),
            f"{prefix}pool_fingerprint": np.array(self.pool_fingerprint),
        }
        if self.mask_bits is not None:
            out[f"{prefix}mask_bits"] = self.mask_bits
        return out


def concatenate_keys(records: Sequence[KeyRecord], offsets: Sequence[int]) -> KeyRecord:
    """Join per-batch records into one, shifting private indices by each batch's offset.

    Raises:
        ValueError: the records disagree on mode, k, private_per_mix or pool.
    """
    first = records[0]
    for rec in records[1:]:
        mismatch = [name for name in ("mode", "k", "private_per_mix", "pool_fingerprint")
                    if getattr(rec, name) != getattr(first, name)]
        if mismatch or (rec.mask_bits is None) != (first.mask_bits is None):
            raise ValueError(f"key records of one encode disagree on {mismatch or ['mask_bits']}")
    indices = []
    for rec, offset in zip(records, offsets, strict=True):
        idx = rec.indices.copy()
        idx[:, : rec.private_per_mix] += offset
        indices.append(idx)
    return KeyRecord(
        coefficients=np.concatenate([r.coefficients for r in records]),
        indices=np.concatenate(indices),
        mask_bits=None if first.mask_bits is None else np.concatenate([r.mask_bits for r in records]),
        mode=first.mode,
        k=first.k,
        private_per_mix=first.private_per_mix,
        seeded=any(r.seeded for r in records),
        pool_fingerprint=first.pool_fingerprint,
    )


@dataclass(frozen=True)
class EncodedBatch:
    """The result of one request.

    Arrays view the response's bytes and are read-only; copy them to modify.

    Attributes:
        request_id: the request's id.
        encoded: (N, H, W, C) float32 or float16, uint8 for a DisguisedNets AES key (None when ``error`` is set).
        mixed_labels: InstaHide: (N, num_classes) float32, private coefficients at their images' classes;
            a stored key's encoding: the labels sent, int64 (N,) (empty when none were sent).
        keys: the key record when the config asked for keys, else None.
        seeded: True when the keys came from an explicit seed.
        error: the per-request failure (only with ``on_error="yield"``), else None.
    """

    request_id: str
    encoded: np.ndarray | None
    mixed_labels: np.ndarray | None
    keys: KeyRecord | None = None
    seeded: bool = False
    error: InstaHideError | None = None

    @classmethod
    def from_proto(cls, msg: transform_pb2.EncodeResponse) -> EncodedBatch:
        if msg.HasField("error"):
            error = InstaHideError(status_code(msg.error.code), msg.error.message,
                                   field=msg.error.field, request_id=msg.request_id)
            return cls(msg.request_id, None, None, error=error)
        return cls(
            request_id=msg.request_id,
            encoded=to_numpy(msg.encoded),
            mixed_labels=to_numpy(msg.labels),
            keys=KeyRecord.from_proto(msg.instahide_keys) if msg.HasField("instahide_keys") else None,
            seeded=bool(msg.seeded),
        )


@dataclass(frozen=True)
class EncodeOutput:
    """The result of :meth:`InstaHideClient.encode` over a whole array.

    Attributes:
        encoded: (N, H, W, C) float32 or float16 (uint8 for a DisguisedNets AES key).
        mixed_labels: (N, num_classes) float32; for a stored key, the labels as sent, int64 (N,) (empty without).
        keys: one record for all N encodings (private indices index the input array), or None.
        seeded: True when any batch's keys came from an explicit seed.
    """

    encoded: np.ndarray
    mixed_labels: np.ndarray
    keys: KeyRecord | None = None
    seeded: bool = False

    def arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for ``np.savez``: ``encoded``, ``labels`` (mixed) and the ``keys_*`` arrays."""
        out = {"encoded": self.encoded, "labels": self.mixed_labels}
        if self.keys is not None:
            out.update(self.keys.arrays())
        return out
