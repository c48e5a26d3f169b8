"""Stored transform keys (DisguisedNets) as the client sees them: ``StoredKey`` descriptions (never material),
the parameters of a new key, and key names.

A key lives in the service's key store as ``keys/{key}``; the client names it when encoding
(``InstaHideClient.encode(images, key="keys/…")``) and never holds its material.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from instahide_client.instahide.v1 import disguisednets_pb2, keys_pb2

METHODS: dict[str, int] = {"rmt": disguisednets_pb2.DISGUISE_METHOD_RMT, "aes": disguisednets_pb2.DISGUISE_METHOD_AES}
MATRICES: dict[str, int] = {"orthogonal": disguisednets_pb2.PROJECTION_MATRIX_ORTHOGONAL,
                            "gaussian": disguisednets_pb2.PROJECTION_MATRIX_GAUSSIAN,
                            "uniform": disguisednets_pb2.PROJECTION_MATRIX_UNIFORM}
_METHOD_NAMES = {v: k for k, v in METHODS.items()} | {disguisednets_pb2.DISGUISE_METHOD_UNSPECIFIED: "rmt"}
_MATRIX_NAMES = {v: k for k, v in MATRICES.items()} | {disguisednets_pb2.PROJECTION_MATRIX_UNSPECIFIED: "orthogonal"}
NAME_PREFIX = "keys/"


def key_name(name_or_id: str) -> str:
    """``keys/{key}`` from itself or the bare id."""
    if not isinstance(name_or_id, str) or not name_or_id.strip():
        raise ValueError(f"expected a key name 'keys/ID' or its ID, got {name_or_id!r}")
    name = name_or_id.strip()
    return name if name.startswith(NAME_PREFIX) else NAME_PREFIX + name


def _count(name: str, value: Any, *, minimum: int, maximum: int = 2**32 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    return int(value)


def disguised_nets_params(*, method: str = "rmt", block: int | Sequence[int] = 4, permute: bool = True,
                          matrix: str = "orthogonal", noise: float = 0.0, matrix_per_channel: bool = False,
                          aes_key_per_block: bool = False, scale: int = 1,
                          salt_pepper: float = 0.0) -> disguisednets_pb2.DisguisedNetsParams:
    """The message of a DisguisedNets key's parameters (the service checks them against the image shape).

    Args:
        method: "rmt" (per-block random projection, float output) or "aes" (AES-128-ECB, uint8 output).
        block: the block side, or (rows, cols); they must divide the images' height and width.
        permute: move blocks by a secret permutation of positions.
        matrix: RMT's matrices: "orthogonal", "gaussian" or "uniform".
        noise: RMT's noise bound on the 0–255 scale (Δ uniform on [0, noise], fresh per call).
        matrix_per_channel: RMT: one matrix per position and channel.
        aes_key_per_block: AES: one AES key per block position.
        scale: AES: encrypt each pixel as a scale×scale cell, keep each cell's mean (the papers' pixel-level
            variant; not invertible).
        salt_pepper: AES: salt-and-pepper rate before encryption.

    Raises:
        ValueError, TypeError: an unknown name or a value out of range.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(map(repr, METHODS))}")
    if matrix not in MATRICES:
        raise ValueError(f"unknown matrix {matrix!r}; expected one of {', '.join(map(repr, MATRICES))}")
    rows, cols = (block, block) if isinstance(block, int | np.integer) else tuple(block)
    for name, value in (("noise", noise), ("salt_pepper", salt_pepper)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number at least 0, got {value!r}")
    return disguisednets_pb2.DisguisedNetsParams(
        method=METHODS[method], block_rows=_count("block", rows, minimum=1),
        block_cols=_count("block", cols, minimum=1), permute=bool(permute), matrix=MATRICES[matrix],
        noise=float(noise), matrix_per_channel=bool(matrix_per_channel),
        aes_key_per_block=bool(aes_key_per_block), scale=_count("scale", scale, minimum=1),
        salt_pepper=float(salt_pepper))


def params_dict(p: disguisednets_pb2.DisguisedNetsParams) -> dict[str, Any]:
    """A DisguisedNets parameters message as ``disguised_nets_params``' options (as the service resolved them)."""
    return {"method": _METHOD_NAMES.get(p.method, str(p.method)), "block": (p.block_rows, p.block_cols),
            "permute": p.permute, "matrix": _MATRIX_NAMES.get(p.matrix, str(p.matrix)), "noise": p.noise,
            "matrix_per_channel": p.matrix_per_channel, "aes_key_per_block": p.aes_key_per_block,
            "scale": p.scale, "salt_pepper": p.salt_pepper}


@dataclass(frozen=True)
class StoredKey:
    """A stored key's description: everything but its material.

    Attributes:
        name: "keys/{key}".
        family: the transform family it serves ("disguised_nets").
        params: its parameters by name (method, block, permute, matrix, noise, ...), defaults filled in.
        image_shape: (H, W, C) of the images it disguises.
        create_time: when it was created (UTC).
        fingerprint: SHA-256 (hex) over material and parameters: two servers disguise alike exactly when the
            fingerprints of their keys agree.
        seeded: its material came from an explicit seed, not the CSPRNG.
        display_name: the creator's label.
    """

    name: str
    family: str
    params: dict[str, Any]
    image_shape: tuple[int, int, int]
    create_time: datetime.datetime
    fingerprint: str
    seeded: bool
    display_name: str = ""

    @property
    def id(self) -> str:
        return self.name.removeprefix(NAME_PREFIX)

    @classmethod
    def from_proto(cls, msg: keys_pb2.Key) -> StoredKey:
        return cls(msg.name, msg.family, params_dict(msg.disguised_nets), tuple(int(d) for d in msg.image_shape),  # type: ignore[arg-type]
                   msg.create_time.ToDatetime(tzinfo=datetime.UTC), msg.fingerprint, msg.seeded, msg.display_name)

    def summary(self) -> str:
        """One line: name, method, shape, block, fingerprint prefix, created."""
        p = self.params
        h, w, c = self.image_shape
        extras = [text for text, shown in ((f"noise {p['noise']:g}", p["noise"]),
                                           (f"scale {p['scale']}", p["scale"] > 1),
                                           (f"salt-pepper {p['salt_pepper']:g}", p["salt_pepper"]),
                                           ("no permutation", not p["permute"]), ("seeded", self.seeded)) if shown]
        return (f"{self.name}  {p['method']}  {h}x{w}x{c}  block {p['block'][0]}x{p['block'][1]}"
                f"{'  ' + ', '.join(extras) if extras else ''}  fingerprint {self.fingerprint[:16]}  "
                f"created {self.create_time:%Y-%m-%d %H:%M:%S}Z{'  ' + self.display_name if self.display_name else ''}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        params = {**self.params, "block": list(self.params["block"])}
        return {"name": self.name, "family": self.family, "params": params, "image_shape": list(self.image_shape),
                "create_time": self.create_time.isoformat(),
                "fingerprint": self.fingerprint, "seeded": self.seeded, "display_name": self.display_name}
