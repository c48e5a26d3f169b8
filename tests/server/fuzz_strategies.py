"""Hypothesis strategies for the server fuzz tests (test_server_fuzz.py): requests a client could send.

Each Encode strategy yields an ``EncodeCase``: the request plus what its answer must be. ``"ok"`` cases
are well-formed by construction (their config samples easily) and must be encoded; ``"invalid"``
ones must be refused with INVALID_ARGUMENT; ``"any"`` ones (wild shapes, dtypes, configs) may go
either way but must get a clear answer. Pixel contents come from numpy seeded by a drawn integer,
so that hypothesis draws a few numbers per tensor instead of every byte.
"""

from __future__ import annotations

import base64
import itertools
import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from instahide_client.instahide.v1 import audit_pb2, instahide_pb2, reconstruction_pb2, tensor_pb2, transform_pb2
from instahide_client.tensors import numpy_dtype, to_tensor

UINT8, FLOAT16, FLOAT32, INT64 = (tensor_pb2.DATA_TYPE_UINT8, tensor_pb2.DATA_TYPE_FLOAT16,
                                  tensor_pb2.DATA_TYPE_FLOAT32, tensor_pb2.DATA_TYPE_INT64)
CROSS, INSIDE = instahide_pb2.MIXING_MODE_CROSS, instahide_pb2.MIXING_MODE_INSIDE
INT32_MAX, INT64_MAX, UINT32_MAX, UINT64_MAX = 2**31 - 1, 2**63 - 1, 2**32 - 1, 2**64 - 1
# Image sizes of well-formed requests: few, so the server builds few public pools.
IMAGE_SIZES = ((4, 4), (8, 8), (5, 7), (32, 32))
MAX_CONTENT_ELEMENTS = 4096  # wild tensors get content matching their shape only up to this size
SPECIAL_FLOATS = (float("nan"), float("inf"), float("-inf"), 1.5, -7.0, 65504.0)

seeds = st.integers(0, UINT32_MAX)
int32s = st.integers(-(2**31), INT32_MAX)
int64s = st.integers(-(2**63), INT64_MAX)
uint32s = st.one_of(st.integers(0, 20), st.integers(0, UINT32_MAX))
enum_values = st.one_of(st.integers(-1, 6), int32s)  # known values, just past them, anything
data_types = st.one_of(st.sampled_from([0, UINT8, FLOAT16, FLOAT32, INT64]), enum_values)
dimensions = st.one_of(
    st.integers(0, 8),
    st.sampled_from([-1, -(2**63), 2**31, 2**32 + 1, 2**40, 2**62, INT64_MAX]),
    int64s,
)
optional_floats = st.one_of(st.none(), st.floats(width=32), st.sampled_from([0.0, 0.5, 1.0, 1 / 3, 1e-30]))
text = st.text(st.characters(codec="utf-8"), max_size=40)


@dataclass(frozen=True)
class EncodeCase:
    """One Encode request and the answer it must get: "ok", "invalid" (INVALID_ARGUMENT) or "any"."""

    request: transform_pb2.EncodeRequest
    expect: str


def pixels(seed: int, shape: tuple[int, ...], dtype: int) -> np.ndarray:
    """Random in-range pixels: uint8 in [0, 255], floats in [-1, 1]."""
    rng = np.random.default_rng(seed)
    if dtype == UINT8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.uniform(-1, 1, size=shape).astype(numpy_dtype(dtype))


@st.composite
def valid_configs(draw, *, num_classes: int) -> transform_pb2.EncodeConfig:
    """A config every well-formed batch of >= 2 images can be encoded with."""
    mode = draw(st.sampled_from([instahide_pb2.MIXING_MODE_UNSPECIFIED, CROSS, INSIDE]))
    k = draw(st.one_of(st.just(0), st.integers(2, 16)))
    outer = transform_pb2.EncodeConfig(output_dtype=draw(st.sampled_from([0, FLOAT32, FLOAT16])))
    config = outer.instahide
    config.mode, config.k, config.num_classes, config.return_keys = mode, k, num_classes, draw(st.booleans())
    if mode != INSIDE:
        # Keep the acceptance of the coefficient bounds above 5%: enough private slots for the large k.
        resolved_k = k or 6
        lowest = 1 + (resolved_k > 8) + (resolved_k > 12)
        private_per_mix = st.integers(lowest, resolved_k)
        if lowest <= 2 <= resolved_k:
            private_per_mix = st.one_of(st.just(0), private_per_mix)  # 0 means 2
        config.private_per_mix = draw(private_per_mix)
    _with_optional_flip_and_seed(draw, config)
    return outer


def _with_optional_flip_and_seed(draw, config: instahide_pb2.InstaHideConfig) -> instahide_pb2.InstaHideConfig:
    """``config`` with sign_flip and seed each set or left unset (both are proto3 optional fields)."""
    if draw(st.booleans()):
        config.sign_flip = draw(st.booleans())
    if draw(st.booleans()):
        config.seed = draw(st.integers(0, UINT64_MAX))
    return config


@st.composite
def valid_requests(draw) -> EncodeCase:
    """A well-formed request with its own config: must be encoded."""
    n = draw(st.integers(2, 8))
    height, width = draw(st.sampled_from(IMAGE_SIZES))
    channels = draw(st.sampled_from([1, 3]))
    dtype = draw(st.sampled_from([UINT8, FLOAT16, FLOAT32]))
    num_classes = draw(st.integers(1, 20))
    images = pixels(draw(seeds), (n, height, width, channels), dtype)
    labels = draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    request = transform_pb2.EncodeRequest(request_id=draw(text), images=to_tensor(images), labels=labels,
                                          config=draw(valid_configs(num_classes=num_classes)))
    return EncodeCase(request, "ok")


@st.composite
def non_finite_requests(draw) -> EncodeCase:
    """Well-formed but for a NaN, an infinity or a value outside [-1, 1] in float images."""
    case = draw(valid_requests())
    request = case.request
    dtype = draw(st.sampled_from([FLOAT16, FLOAT32]))
    shape = tuple(request.images.shape)
    images = pixels(draw(seeds), shape, dtype)
    flat = images.reshape(-1)
    flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(SPECIAL_FLOATS))
    request.images.CopyFrom(to_tensor(images))
    return EncodeCase(request, "invalid")


@st.composite
def wild_tensors(draw, *, dtypes=data_types) -> tensor_pb2.Tensor:
    """Any dtype and shape; content that matches it, or not."""
    dtype = draw(dtypes)
    shape = draw(st.lists(dimensions, max_size=6))
    tensor = tensor_pb2.Tensor(dtype=dtype, shape=shape)
    known = dtype in (UINT8, FLOAT16, FLOAT32, INT64)
    count = math.prod(shape) if shape else 1
    kind = draw(st.sampled_from(["matching", "short", "long", "random", "empty"]))
    if kind == "matching" and known and 0 <= count <= MAX_CONTENT_ELEMENTS and all(d >= 0 for d in shape):
        array = pixels(draw(seeds), (count,), dtype) if dtype != INT64 else np.arange(count, dtype="<i8")
        if dtype in (FLOAT16, FLOAT32) and count and draw(st.booleans()):
            array[draw(st.integers(0, count - 1))] = draw(st.sampled_from(SPECIAL_FLOATS))
        tensor.content = array.tobytes()
    elif kind in ("short", "long") and known and 0 < count <= MAX_CONTENT_ELEMENTS:
        size = count * numpy_dtype(dtype).itemsize + (-1 if kind == "short" else draw(st.integers(1, 9)))
        tensor.content = bytes(max(0, size))
    elif kind != "empty":
        tensor.content = draw(st.binary(max_size=64))
    return tensor


@st.composite
def wild_configs(draw) -> transform_pb2.EncodeConfig:
    """Every field of EncodeConfig (and of InstaHideConfig, or no transform at all) over its whole wire range."""
    outer = transform_pb2.EncodeConfig(output_dtype=draw(data_types))
    if draw(st.integers(0, 9)) == 0:
        return outer  # no transform: InstaHide with every default (num_classes 0: refused)
    config = outer.instahide
    config.mode, config.k, config.private_per_mix = draw(enum_values), draw(uint32s), draw(uint32s)
    config.return_keys, config.num_classes = draw(st.booleans()), draw(uint32s)
    for name in ("max_coefficient", "min_private_mass"):
        value = draw(optional_floats)
        if value is not None:
            setattr(config, name, value)
    _with_optional_flip_and_seed(draw, config)
    return outer


@st.composite
def wild_requests(draw) -> EncodeCase:
    """Any combination of images, labels and config (each possibly absent)."""
    request = transform_pb2.EncodeRequest(request_id=draw(text))
    images = draw(st.one_of(st.none(), wild_tensors(), valid_requests().map(lambda c: c.request.images)))
    if images is not None:
        request.images.CopyFrom(images)
    request.labels.extend(draw(st.lists(st.one_of(st.integers(-2, 20), int64s), max_size=10)))
    config = draw(st.one_of(st.none(), wild_configs(), valid_configs(num_classes=draw(st.integers(1, 20)))))
    if config is not None:
        request.config.CopyFrom(config)
    return EncodeCase(request, "any")


CONFIG_FIELDS = ("mode", "k", "private_per_mix", "max_coefficient", "min_private_mass", "output_dtype",
                 "num_classes")


@st.composite
def perturbed_requests(draw) -> EncodeCase:
    """A well-formed request with one thing changed: reaches the checks deep in the encoder."""
    request = draw(valid_requests()).request
    outer, images = request.config, request.images
    config = outer.instahide
    what = draw(st.sampled_from([*CONFIG_FIELDS, "labels", "shape", "dtype", "content", "no config"]))
    if what == "output_dtype":
        outer.output_dtype = draw(enum_values)
    elif what == "mode":
        config.mode = draw(enum_values)
    elif what in ("k", "private_per_mix", "num_classes"):
        setattr(config, what, draw(st.one_of(st.integers(0, 20), uint32s)))
    elif what in ("max_coefficient", "min_private_mass"):
        # Around the bounds: 1/k (exactly, as float32) is feasible but never sampled, for instance.
        k = config.k or (4 if config.mode == INSIDE else 6)
        setattr(config, what, draw(st.one_of(st.floats(width=32), st.sampled_from(
            [1 / k, float(np.float32(1 / k)), float(np.nextafter(np.float32(1 / k), np.float32(1))), 0.3, 1.0]))))
    elif what == "labels":
        labels = list(request.labels)
        labels[draw(st.integers(0, len(labels) - 1))] = draw(st.one_of(st.integers(-2, 25), int64s))
        request.ClearField("labels")
        request.labels.extend(draw(st.sampled_from([labels, labels[1:], [*labels, 0]])))
    elif what == "shape":
        images.shape[draw(st.integers(0, 3))] = draw(dimensions)
    elif what == "dtype":
        images.dtype = draw(data_types)
    elif what == "content":
        cut = draw(st.integers(-8, 8))
        images.content = images.content[:cut] if cut < 0 else images.content + bytes(cut)
    else:
        request.ClearField("config")  # the stream's previous config applies
    return EncodeCase(request, "any")


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, picked with the given relative weights."""
    bounds = list(itertools.accumulate(weight for weight, _ in choices))
    return st.integers(0, bounds[-1] - 1).flatmap(
        lambda i: choices[next(n for n, bound in enumerate(bounds) if i < bound)][1])


encode_cases = weighted(
    (30, valid_requests()),
    (35, perturbed_requests()),
    (10, non_finite_requests()),
    (22, wild_requests()),
    (3, st.just(EncodeCase(transform_pb2.EncodeRequest(), "invalid"))),  # empty: images are required
)


def mangled(message_bytes: bytes):
    """Strategies of byte strings derived from a serialized message: truncated, bit-flipped, spliced."""
    if not message_bytes:
        return st.binary(max_size=32)
    cut = st.integers(0, len(message_bytes) - 1)
    return st.one_of(
        cut.map(lambda i: message_bytes[:i]),
        st.tuples(cut, st.integers(0, 7)).map(
            lambda p: message_bytes[:p[0]] + bytes([message_bytes[p[0]] ^ (1 << p[1])]) + message_bytes[p[0] + 1:]),
        st.tuples(cut, st.binary(min_size=1, max_size=8)).map(
            lambda p: message_bytes[:p[0]] + p[1] + message_bytes[p[0]:]),
    )


@st.composite
def raw_messages(draw, serialized) -> bytes:
    """Bytes for a method expecting some message: a real one (``serialized``), a mangled one, or noise."""
    message_bytes = draw(serialized)
    return draw(st.one_of(
        st.just(message_bytes),
        mangled(message_bytes),
        st.binary(max_size=64),
        st.sampled_from([b"", b"\x0a", b"\x12\xff\xff\xff\xff\x0f", b"\x0a\x02\xff\xfe", b"\xff" * 11,
                         b"\x08" + b"\x80" * 10 + b"\x01", b"\x1a\x01"]),  # empty, cut, huge length, bad UTF-8…
    ))


# AuditService.

hex_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
audit_names = st.one_of(
    hex_ids.map(lambda h: f"audits/{h}"),
    hex_ids,
    text,
    text.map(lambda t: f"audits/{t}"),
    st.sampled_from(["", "audits/", "audits/" + "0" * 32 + "\n", "audits/" + "F" * 32, "audits/../x"]),
)


def _token(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode()


def page_tokens(state: int):
    """Tokens: garbage, or the server's own format ("v1:{seq}:{state}") with any numbers in it."""
    sequence_numbers = st.one_of(st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1]),
                                 st.integers(-5, 10**6), st.integers(-(10**30), 10**30))
    return weighted(
        (1, st.just("")),
        (2, text),
        (6, st.tuples(sequence_numbers, weighted((3, st.just(state)), (1, enum_values))).map(
            lambda p: _token(f"v1:{p[0]}:{p[1]}"))),
        (1, st.lists(text.filter(lambda t: ":" not in t), max_size=4).map(lambda parts: _token(":".join(parts)))),
        (1, st.binary(max_size=24).map(lambda b: base64.urlsafe_b64encode(b).decode())),
    )


@st.composite
def list_requests(draw) -> audit_pb2.ListAuditsRequest:
    state = draw(weighted((4, st.integers(0, 5)), (1, enum_values)))
    return audit_pb2.ListAuditsRequest(page_size=draw(weighted((4, st.integers(0, 1100)), (1, int32s))),
                                       page_token=draw(page_tokens(state)), state=state)

DATASET_NAMES = ("small.npz", "missing.npz", "empty.npz", "zip-magic.npz", "text.npz", "pickled.npz",
                 "no-labels.npz", "zero-size.npz", "four-channels.npz", "nan.npz", "lone-array.npz", "bad-crc.npz",
                 "sub", "sub/", "link/passwd", "../small.npz", "/etc/passwd", ".", "a\x00b", "x" * 300, "x/" * 3000)
dataset_names = st.one_of(st.sampled_from(DATASET_NAMES), text)


ATTACK_NAMES = ("ciphertext_only", "pool_aware", "key_aware", "photo_aware", "nope", "")
attack_lists = st.lists(st.one_of(st.sampled_from(ATTACK_NAMES), text), max_size=3)


def reconstruction_spec(*, k: int = 0, mode: int = 0, num_classes: int = 0, seed: int | None = None,
                        encodings_per_image: int = 0, precomputed: bool = False,
                        **fields) -> audit_pb2.AuditSpec:
    config = instahide_pb2.InstaHideConfig(k=k, mode=mode, num_classes=num_classes, seed=seed)
    return audit_pb2.AuditSpec(reconstruction=reconstruction_pb2.ReconstructionSpec(
        instahide=config, encodings_per_image=encodings_per_image, precomputed_encodings=precomputed), **fields)


def chunk_request(**arrays) -> audit_pb2.StartAuditRequest:
    """A StartAudit message carrying a reconstruction chunk of these tensors (and labels)."""
    labels = arrays.pop("labels", [])
    chunk = reconstruction_pb2.ReconstructionChunk(labels=labels, **{k: v for k, v in arrays.items() if v is not None})
    return audit_pb2.StartAuditRequest(reconstruction=chunk)


@st.composite
def valid_uploads(draw) -> list[audit_pb2.StartAuditRequest]:
    """An audit a server accepts (or queues no more of): a few small private images, cheap settings."""
    n = draw(st.integers(2, 6))
    channels = draw(st.sampled_from([1, 3]))
    images = pixels(draw(seeds), (n, 8, 8, channels), UINT8)
    num_classes = draw(st.integers(1, 5))
    spec = reconstruction_spec(k=draw(st.integers(3, 6)), encodings_per_image=draw(st.integers(1, 3)),
                               num_classes=draw(st.sampled_from([0, num_classes])), display_name=draw(text),
                               seed=draw(st.one_of(st.none(), st.integers(0, UINT64_MAX))))
    if draw(st.booleans()):
        spec.skipped_attacks.append("key_aware")
    labels = draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    split = draw(st.integers(1, n))  # two chunks when split < n
    messages = [chunk_request(images=to_tensor(images[:split]), labels=labels[:split])]
    messages[0].spec.CopyFrom(spec)
    if split < n:
        messages.append(chunk_request(images=to_tensor(images[split:]), labels=labels[split:]))
    return messages


@st.composite
def wild_specs(draw) -> audit_pb2.AuditSpec:
    spec = reconstruction_spec(
        mode=draw(st.one_of(st.sampled_from([0, CROSS]), enum_values)), k=draw(uint32s),
        encodings_per_image=draw(st.one_of(st.integers(0, 4), st.integers(0, 1200), uint32s)),
        num_classes=draw(uint32s), dataset=draw(st.one_of(st.just(""), dataset_names)),
        precomputed=draw(st.booleans()), display_name=draw(text),
        seed=draw(st.one_of(st.none(), st.integers(0, UINT64_MAX))),
        attacks=draw(attack_lists), extra_attacks=draw(attack_lists), skipped_attacks=draw(attack_lists),
    )
    if draw(st.integers(0, 9)) == 0:
        spec.reconstruction.instahide.return_keys = True
    if draw(st.integers(0, 9)) == 0:
        spec.ClearField("reconstruction")  # no kind: a reconstruction audit of InstaHide's defaults
    return spec


@st.composite
def wild_audit_chunks(draw) -> audit_pb2.StartAuditRequest:
    if draw(st.integers(0, 9)) == 0:
        return audit_pb2.StartAuditRequest()  # no chunk at all
    arrays = {}
    for name in ("images", "encodings", "encoding_labels"):
        arrays[name] = draw(st.one_of(st.none(), wild_tensors(dtypes=st.sampled_from([UINT8, FLOAT16, FLOAT32])),
                                      wild_tensors()))
    return chunk_request(labels=draw(st.lists(st.one_of(st.integers(-1, 5), int64s), max_size=8)), **arrays)


@st.composite
def precomputed_uploads(draw) -> list[audit_pb2.StartAuditRequest]:
    """Encodings made elsewhere, with mixed labels that may be NaN, negative or out of scale."""
    n, e = draw(st.integers(1, 4)), draw(st.integers(0, 8))
    classes = draw(st.integers(1, 4))
    originals = pixels(draw(seeds), (n, 8, 8, 3), UINT8)
    encodings = pixels(draw(seeds), (e, 8, 8, 3), FLOAT32)
    labels = np.random.default_rng(draw(seeds)).dirichlet(np.ones(classes), size=e).astype(np.float32)
    if e and draw(st.booleans()):
        labels.reshape(-1)[draw(st.integers(0, labels.size - 1))] = draw(st.sampled_from(SPECIAL_FLOATS))
    spec = reconstruction_spec(precomputed=True, k=draw(st.integers(0, 7)),
                               encodings_per_image=draw(st.integers(0, 4)))
    message = chunk_request(images=to_tensor(originals), encodings=to_tensor(encodings),
                            encoding_labels=to_tensor(labels.reshape(e, classes)))
    message.spec.CopyFrom(spec)
    return [message]


@st.composite
def wild_uploads(draw) -> list[audit_pb2.StartAuditRequest]:
    """A StartAudit stream: a spec (or not) with data, then chunks, sometimes a second spec."""
    first = draw(wild_audit_chunks())
    if draw(st.integers(0, 9)):  # mostly with a spec
        first.spec.CopyFrom(draw(wild_specs()))
    rest = draw(st.lists(wild_audit_chunks(), max_size=3))
    if rest and draw(st.booleans()):
        rest[-1].spec.CopyFrom(draw(wild_specs()))
    return [first, *rest]


@st.composite
def dataset_audits(draw) -> list[audit_pb2.StartAuditRequest]:
    """A spec naming a server-side dataset, and no data."""
    spec = draw(st.one_of(wild_specs(), st.builds(lambda k, t: reconstruction_spec(k=k, encodings_per_image=t),
                                                  st.integers(3, 6), st.integers(1, 3))))
    spec.dataset = draw(dataset_names)
    return [audit_pb2.StartAuditRequest(spec=spec)]


start_audit_streams = st.one_of(
    valid_uploads().map(lambda m: (m, "ok")),
    dataset_audits().map(lambda m: (m, "any")),
    precomputed_uploads().map(lambda m: (m, "any")),
    wild_uploads().map(lambda m: (m, "any")),
    st.just(([], "invalid")),
)
