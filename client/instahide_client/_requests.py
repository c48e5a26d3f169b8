"""Building Encode requests: the config from keyword options, and input checks before sending."""

from __future__ import annotations

from typing import Any

import numpy as np

from instahide_client._types import MODES, EncodeBatch
from instahide_client.defenses import defense_message
from instahide_client.defenses import outputs_kind as outputs_kind_value
from instahide_client.instahide.v1 import defenses_pb2, disguisednets_pb2, instahide_pb2, tensor_pb2, transform_pb2
from instahide_client.keys import key_name
from instahide_client.tensors import to_tensor

OUTPUT_DTYPES: dict[str, int] = {
    "float32": tensor_pb2.DATA_TYPE_FLOAT32,
    "float16": tensor_pb2.DATA_TYPE_FLOAT16,
}
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float16))
_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1


def _check_count(name: str, value: int | None, *, minimum: int) -> int:
    """0 for None (the proto's "use the default"); else an int in [minimum, 2**32)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:  # the service checks the upper bounds it enforces (`instahide info` lists them)
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if value > _UINT32_MAX:
        raise ValueError(f"{name} must fit in 32 bits, got {value}")
    return int(value)


def encode_config(
    *,
    num_classes: int,
    mode: str = "cross",
    k: int | None = None,
    private_per_mix: int | None = None,
    max_coefficient: float | None = None,
    min_private_mass: float | None = None,
    sign_flip: bool = True,
    output_dtype: str | np.dtype | type = "float32",
    return_keys: bool = False,
    seed: int | None = None,
) -> transform_pb2.EncodeConfig:
    """Build the ``EncodeConfig`` message of an InstaHide encoding from keyword options (None = the service's
    default).

    Args:
        num_classes: width of the one-hot labels; labels must lie in [0, num_classes).
        mode: "cross" (private images plus the public pool) or "inside" (private only).
        k: images mixed per encoding (service default: 6 cross, 4 inside).
        private_per_mix: private images per cross-mode mix (service default 2).
        max_coefficient: redraw coefficient rows while one exceeds this (service default 0.65).
        min_private_mass: cross mode: redraw while the private coefficients sum below this
            (service default 0.3).
        sign_flip: multiply each element by a random sign.
        output_dtype: "float32" or "float16" (a numpy dtype works too).
        return_keys: return the key record with each batch.
        seed: reproducible keys from this seed; None draws them from the CSPRNG. Seeded results
            are flagged ``seeded``.

    Raises:
        ValueError: an unknown mode or dtype, or a value out of range.
        TypeError: a value of the wrong type.

    Examples:
        >>> encode_config(num_classes=10, mode="inside", k=4).instahide.k
        4
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(map(repr, MODES))}")
    dtype = _output_dtype(output_dtype)
    fields: dict[str, Any] = {
        "num_classes": _check_count("num_classes", num_classes, minimum=1),
        "mode": MODES[mode],
        "k": _check_count("k", k, minimum=2),  # Encode mixes at least two images (`instahide info`: the range)
        "private_per_mix": _check_count("private_per_mix", private_per_mix, minimum=1),
        "sign_flip": bool(sign_flip),
        "return_keys": bool(return_keys),
    }
    for name, value in (("max_coefficient", max_coefficient), ("min_private_mass", min_private_mass)):
        if value is not None:
            value = float(value)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
            fields[name] = value
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not 0 <= seed <= _UINT64_MAX:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        fields["seed"] = int(seed)
    return transform_pb2.EncodeConfig(output_dtype=dtype, instahide=instahide_pb2.InstaHideConfig(**fields))


def key_config(key: str, *, output_dtype: str | np.dtype | type = "float32") -> transform_pb2.EncodeConfig:
    """The ``EncodeConfig`` of a DisguisedNets encoding under the stored key ``key`` ("keys/ID" or the ID).

    ``output_dtype`` applies to RMT keys; AES keys answer uint8.

    Examples:
        >>> key_config("keys/0123abcd").disguised_nets.key
        'keys/0123abcd'
    """
    return transform_pb2.EncodeConfig(output_dtype=_output_dtype(output_dtype),
                                      disguised_nets=disguisednets_pb2.DisguisedNetsConfig(key=key_name(key)))


def defense_config(defense: Any, *, outputs_kind: str = "auto", seed: int | None = None,
                   output_dtype: str | np.dtype | type = "float32") -> transform_pb2.EncodeConfig:
    """The ``EncodeConfig`` of an output defense ("gauss:0.1", "argmax", ... or an ``OutputDefense``).

    Examples:
        >>> defense_config("topk:3").output_defense.defense.top_k.k
        3
    """
    config = defenses_pb2.OutputDefenseConfig(defense=defense_message(defense),
                                              outputs_kind=outputs_kind_value(outputs_kind))
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        config.seed = int(seed)
    return transform_pb2.EncodeConfig(output_dtype=_output_dtype(output_dtype), output_defense=config)


def _output_dtype(output_dtype: str | np.dtype | type) -> int:
    dtype_name = output_dtype if isinstance(output_dtype, str) else _dtype_name(output_dtype)
    if dtype_name not in OUTPUT_DTYPES:
        raise ValueError(f"unknown output_dtype {output_dtype!r}; expected one of "
                         f"{', '.join(map(repr, OUTPUT_DTYPES))}")
    return OUTPUT_DTYPES[dtype_name]


def _dtype_name(dtype: np.dtype | type) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        return repr(dtype)


def batch_bounds(count: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch; a last batch of one image joins the one before it.

    The service mixes every image with at least one private partner from its batch, so it refuses
    a batch of one; the joined batch is ``batch_size + 1`` images, which only matters to
    ``max_message_bytes`` at the margin.

    Examples:
        >>> batch_bounds(9, 4)
        [(0, 4), (4, 9)]
    """
    bounds = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    if batch_size > 1 and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def check_batch(images: Any, labels: Any, *, model_outputs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Check one batch before it is sent; return it as arrays.

    Args:
        images: (N, H, W, C) uint8, float32 or float16; with ``model_outputs``, a model's outputs: (N, C) or
            (N, C, h, w) float32 or float16.
        labels: (N,) integers; None sends none (a stored key's encoding and a defense take labels optionally).

    Raises:
        ValueError: a wrong rank, dtype or length, with the actual and expected values.
    """
    images = np.asarray(images)
    if model_outputs:
        if images.ndim not in (2, 4):
            raise ValueError(f"outputs must have shape (N, C) or (N, C, h, w), got shape {images.shape}")
        if images.dtype not in (np.float32, np.float16):
            raise ValueError(f"outputs must be float32 or float16, got {images.dtype}")
    elif images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got shape {images.shape}")
    elif images.dtype not in IMAGE_DTYPES:
        raise ValueError(f"images must be uint8, float32 or float16, got {images.dtype}")
    if labels is None:
        return images, np.zeros(0, np.int64)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if len(labels) != len(images):
        raise ValueError(f"labels has length {len(labels)} but {'outputs' if model_outputs else 'images'} has "
                         f"{len(images)}")
    return images, labels


def as_batch(item: Any) -> EncodeBatch:
    """An ``EncodeBatch`` from itself or an ``(images, labels)`` pair."""
    if isinstance(item, EncodeBatch):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return EncodeBatch(*item)
    raise TypeError(f"expected an EncodeBatch or an (images, labels) tuple, got {type(item).__name__}")


def make_request(item: Any, index: int, config: transform_pb2.EncodeConfig | None, *,
                 model_outputs: bool = False) -> transform_pb2.EncodeRequest:
    """The request for one stream item; its id is the item's own or ``str(index)``. ``model_outputs``: the
    stream's config is an output defense, whose items are a model's outputs."""
    batch = as_batch(item)
    images, labels = check_batch(batch.images, batch.labels, model_outputs=model_outputs)
    request = transform_pb2.EncodeRequest(
        request_id=str(index) if batch.request_id is None else str(batch.request_id),
        images=to_tensor(images),
        labels=labels.tolist(),
    )
    if config is not None:
        request.config.CopyFrom(config)
    return request
