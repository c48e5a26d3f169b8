"""A key's material as bytes and back, and what describes a key besides (``KeyRecord``).

Material is packed as an ``.npz`` (numpy arrays, no pickles) that only ever leaves memory sealed under the KEK
(store.py). The description (family, parameters, image shape, fingerprint…) is JSON and safe to show.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass

import numpy as np

from instahide_ops.transforms.disguisednets import DisguisedNetsKey, DisguisedNetsParams
from instahide_ops.transforms.disguisednets.keys import check_params

FAMILY = "disguised_nets"  # the families with long-lived keys; one today


@dataclass(frozen=True)
class KeyRecord:
    """Everything about a stored key but its material."""

    id: str
    owner: str
    family: str
    params: DisguisedNetsParams
    image_shape: tuple[int, int, int]
    create_time_ns: int
    fingerprint: str
    seeded: bool
    display_name: str = ""

    @property
    def name(self) -> str:
        return "keys/" + self.id

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["params"] = dataclasses.asdict(self.params)
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KeyRecord:
        fields = json.loads(text)
        params = fields.pop("params")
        params["block"] = tuple(params["block"])
        fields["image_shape"] = tuple(fields["image_shape"])
        return cls(params=DisguisedNetsParams(**params), **fields)


def pack(key: DisguisedNetsKey) -> bytes:
    arrays = {"permutation": key.permutation}
    if key.matrices is not None:
        arrays["matrices"] = key.matrices
    if key.aes_keys is not None:
        arrays["aes_keys"] = key.aes_keys
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack(record: KeyRecord, packed: bytes) -> DisguisedNetsKey:
    """The key of ``record`` from its packed material; ValueError when they do not belong together."""
    check_params(record.params, record.image_shape)
    with np.load(io.BytesIO(packed), allow_pickle=False) as arrays:
        key = DisguisedNetsKey(record.params, record.image_shape, arrays["permutation"],
                               arrays.get("matrices"),
                               arrays.get("aes_keys"), record.seeded)
    if key.fingerprint() != record.fingerprint:
        raise ValueError("its material does not match its fingerprint")
    return key
