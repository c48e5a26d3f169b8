"""Building the StartAudit stream: the spec from keyword options, input checks, then data chunks."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from instahide_client._requests import IMAGE_DTYPES, _check_count
from instahide_client._types import MODES
from instahide_client.instahide.v1 import audit_pb2, disguisednets_pb2, instahide_pb2, reconstruction_pb2
from instahide_client.keys import StoredKey, disguised_nets_params
from instahide_client.tensors import to_tensor

_UINT64_MAX = 2**64 - 1
ENCODING_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
# Room for the spec-less message's framing, field tags and the labels next to the tensor bytes.
_MESSAGE_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class AuditUpload:
    """Checked inputs of one StartAudit call: the spec and the arrays to stream after it."""

    spec: audit_pb2.AuditSpec
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    encodings: np.ndarray | None = None
    encoding_labels: np.ndarray | None = None


def audit_spec(*, mode: str = "cross", k: int | None = None, encodings_per_image: int | None = None,
               num_classes: int | None = None, seed: int | None = None, attacks: Sequence[str] = (),
               extra_attacks: Sequence[str] = (), skipped_attacks: Sequence[str] = (), dataset: str | None = None,
               precomputed_encodings: bool = False, display_name: str = "", disguised_nets: Any = None,
               known_pairs: int | None = None, skip_curves: bool = False) -> audit_pb2.AuditSpec:
    """The ``AuditSpec`` message of a reconstruction audit, from keyword options (None and empty = the service's
    defaults: InstaHide with k 6, T 50 or for precomputed encodings E / N, the default attacks).

    With ``disguised_nets`` (a ``StoredKey``, a dict of ``keys.disguised_nets_params`` options, or that message)
    the audit is of DisguisedNets under a fresh key of those parameters: ``known_pairs`` (None: the service's 4)
    of the images go to the Level-2 attacker, ``skip_curves`` leaves the curves out; InstaHide's options
    (mode, k, encodings_per_image, num_classes, precomputed encodings) must stay unset.

    Raises:
        ValueError: an unknown mode, a value out of range, or an attack name that is not a plain name.
        TypeError: a value of the wrong type.

    Examples:
        >>> audit_spec(k=4, seed=1).reconstruction.instahide.seed
        1
    """
    if disguised_nets is not None:
        return _disguised_nets_spec(
            disguised_nets, known_pairs=known_pairs, skip_curves=skip_curves, seed=seed, dataset=dataset,
            display_name=display_name, attacks=attacks, extra_attacks=extra_attacks, skipped_attacks=skipped_attacks,
            instahide={"mode": mode != "cross", "k": k, "encodings_per_image": encodings_per_image,
                       "num_classes": num_classes, "encodings": precomputed_encodings})
    if known_pairs is not None or skip_curves:
        raise ValueError("known_pairs and skip_curves are options of a DisguisedNets audit (pass disguised_nets)")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(map(repr, MODES))}")
    if dataset is not None and not isinstance(dataset, str):
        raise TypeError(f"dataset must be a str, got {type(dataset).__name__}")
    if not isinstance(display_name, str):
        raise TypeError(f"display_name must be a str, got {type(display_name).__name__}")
    config = instahide_pb2.InstaHideConfig(
        mode=MODES[mode], k=_check_count("k", k, minimum=3),  # the attacks need a public image beside two private
        num_classes=_check_count("num_classes", num_classes, minimum=1))
    if seed is not None:
        config.seed = _seed(seed)
    spec = audit_pb2.AuditSpec(
        dataset=dataset or "", display_name=display_name,
        attacks=_names("attacks", attacks), extra_attacks=_names("extra_attacks", extra_attacks),
        skipped_attacks=_names("skipped_attacks", skipped_attacks),
        reconstruction=reconstruction_pb2.ReconstructionSpec(
            instahide=config, precomputed_encodings=bool(precomputed_encodings),
            encodings_per_image=_check_count("encodings_per_image", encodings_per_image, minimum=1)))
    return spec


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed <= _UINT64_MAX:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return int(seed)


def _disguised_nets_spec(params: Any, *, known_pairs: int | None, skip_curves: bool, seed: int | None,
                         dataset: str | None, display_name: str, attacks: Sequence[str],
                         extra_attacks: Sequence[str], skipped_attacks: Sequence[str],
                         instahide: dict[str, Any]) -> audit_pb2.AuditSpec:
    given = [name for name, value in instahide.items() if value not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: InstaHide's options, not a DisguisedNets audit's")
    if isinstance(params, StoredKey):
        params = params.params
    if isinstance(params, dict):
        params = disguised_nets_params(**params)
    if not isinstance(params, disguisednets_pb2.DisguisedNetsParams):
        raise TypeError(f"disguised_nets must be a StoredKey, a dict of options or a DisguisedNetsParams, got "
                        f"{type(params).__name__}")
    config = reconstruction_pb2.DisguisedNetsAudit(params=params, skip_curves=bool(skip_curves))
    if known_pairs is not None:
        if isinstance(known_pairs, bool) or not isinstance(known_pairs, int | np.integer) or known_pairs < 0:
            raise ValueError(f"known_pairs must be an int at least 0, got {known_pairs!r}")
        config.known_pairs = int(known_pairs)
    if seed is not None:
        config.seed = _seed(seed)
    return audit_pb2.AuditSpec(
        dataset=dataset or "", display_name=display_name, attacks=_names("attacks", attacks),
        extra_attacks=_names("extra_attacks", extra_attacks),
        skipped_attacks=_names("skipped_attacks", skipped_attacks),
        reconstruction=reconstruction_pb2.ReconstructionSpec(disguised_nets=config))


def _names(option: str, names: Sequence[str]) -> list[str]:
    """Attack names as the service takes them (it knows which exist and says so)."""
    if isinstance(names, str):
        raise TypeError(f"{option} must be a sequence of attack names, not one str")
    out = [str(name).strip() for name in names]
    bad = [name for name in out if not name or not name.replace("_", "").isalnum()]
    if bad:
        raise ValueError(f"{option}: {bad[0]!r} is not an attack name (e.g. 'pool_aware')")
    return out


def _check_images(images: Any, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, H, W, C), got shape {images.shape}")
    if images.dtype not in IMAGE_DTYPES:
        raise ValueError(f"{name} must be uint8, float32 or float16, got {images.dtype}")
    if images.dtype.kind == "f" and images.size and not (np.isfinite(images).all()
                                                         and np.abs(images).max() <= 1.0 + 1e-3):
        raise ValueError(f"float {name} must be finite and in [-1, 1] (or pass uint8 in [0, 255])")
    return images


def _check_labels(labels: Any, count: int, num_classes: int | None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if len(labels) != count:
        raise ValueError(f"labels has length {len(labels)} but images has {count}")
    if count and int(labels.min()) < 0:
        raise ValueError(f"labels must be non-negative, got {int(labels.min())}")
    if count and num_classes is not None and int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be below num_classes={num_classes}, got {int(labels.max())}")
    return labels.astype(np.int64, copy=False)


def check_audit_inputs(images: Any = None, labels: Any = None, *, dataset: str | None = None,
                       encodings: Any = None, encoding_labels: Any = None,
                       **spec_options: Any) -> AuditUpload:
    """Check what :meth:`InstaHideClient.start_audit` was given, before anything is sent.

    Exactly one source: ``images`` with ``labels`` (private images to encode and attack),
    ``encodings`` with ``encoding_labels`` and the originals as ``images`` (encodings made
    elsewhere; no ``labels``), or ``dataset`` (a server-side dataset, nothing uploaded).

    Raises:
        ValueError: a missing or extra source, a wrong rank, dtype, length or value.
        TypeError: an option of the wrong type.
    """
    precomputed = encodings is not None or encoding_labels is not None
    if dataset:
        extra = [n for n, v in (("images", images), ("labels", labels), ("encodings", encodings),
                                ("encoding_labels", encoding_labels)) if v is not None]
        if extra:
            raise ValueError(f"dataset={dataset!r} names a server-side dataset; do not also pass "
                             f"{', '.join(extra)}")
        return AuditUpload(audit_spec(dataset=dataset, **spec_options))
    spec = audit_spec(precomputed_encodings=precomputed, **spec_options)
    num_classes = spec.reconstruction.instahide.num_classes or None
    if images is None:
        raise ValueError("pass images (with labels), encodings (with encoding_labels and the original "
                         "images), or a server-side dataset")
    images = _check_images(images)
    if spec.reconstruction.HasField("disguised_nets"):  # labels optional: they score the papers' attack success
        if len(images) < 2:
            raise ValueError(f"an audit needs at least 2 private images, got {len(images)}")
        return AuditUpload(spec, images, None if labels is None else _check_labels(labels, len(images), None))
    if not precomputed:
        if labels is None:
            raise ValueError("labels are required with images (one class label per image)")
        if len(images) < 2:
            raise ValueError(f"an audit needs at least 2 private images, got {len(images)}")
        return AuditUpload(spec, images, _check_labels(labels, len(images), num_classes))
    if encodings is None or encoding_labels is None:
        raise ValueError("precomputed encodings need both encodings and encoding_labels")
    if labels is not None:
        raise ValueError("labels are not used with precomputed encodings (their mixed labels go in "
                         "encoding_labels)")
    if len(images) < 2:
        raise ValueError(f"precomputed encodings need at least 2 original images, got {len(images)}")
    encodings = np.asarray(encodings)
    if encodings.ndim != 4:
        raise ValueError(f"encodings must have shape (E, H, W, C), got shape {encodings.shape}")
    if encodings.dtype not in ENCODING_DTYPES:
        raise ValueError(f"encodings must be float32 or float16, got {encodings.dtype}")
    if encodings.shape[1:] != images.shape[1:]:
        raise ValueError(f"encodings have images of shape {encodings.shape[1:]} but the originals "
                         f"have {images.shape[1:]}")
    if len(encodings) < 2:
        raise ValueError(f"need at least 2 encodings, got {len(encodings)}")
    if not (np.isfinite(encodings).all() and np.abs(encodings).max() <= 1.0 + 1e-3):
        raise ValueError("encodings must be finite and in [-1, 1]")
    encoding_labels = np.asarray(encoding_labels)
    if encoding_labels.ndim != 2 or encoding_labels.shape[0] != len(encodings):
        raise ValueError(f"encoding_labels must have shape (E={len(encodings)}, classes), got shape "
                         f"{encoding_labels.shape}")
    if encoding_labels.dtype.kind not in "fiu":
        raise ValueError(f"encoding_labels must be numbers, got {encoding_labels.dtype}")
    encoding_labels = encoding_labels.astype(np.float32, copy=False)
    if not np.isfinite(encoding_labels).all():
        raise ValueError("encoding_labels must be finite (no NaN or Inf)")
    return AuditUpload(spec, images, None, encodings, encoding_labels)


def chunk_rows(row_bytes: int, chunk_images: int, max_message_bytes: int) -> int:
    """Rows per message: at most ``chunk_images``, and few enough to stay below the message limit.

    Raises:
        ValueError: one row alone does not fit in a message.

    Examples:
        >>> chunk_rows(3072, 1024, 64 * 2**20)
        1024
        >>> chunk_rows(3072, 1024, 1 * 2**20)
        320
    """
    if chunk_images < 1:
        raise ValueError(f"chunk_images must be at least 1, got {chunk_images}")
    budget = max_message_bytes - _MESSAGE_OVERHEAD
    if budget < row_bytes:
        raise ValueError(f"one image of {row_bytes} bytes does not fit in a message of "
                         f"{max_message_bytes} bytes; raise max_message_bytes")
    return max(1, min(chunk_images, budget // max(row_bytes, 1)))


def audit_requests(upload: AuditUpload, *, chunk_images: int = 1024,
                   max_message_bytes: int = 64 * 2**20) -> Iterator[audit_pb2.StartAuditRequest]:
    """The StartAudit stream: the spec, then images (+ labels), then encodings (+ their labels).

    The chunk sizes are checked now (ValueError when one image cannot fit in a message); the
    messages are built lazily, one chunk's copy at a time.
    """
    image_rows = encoding_rows = 0
    if upload.images is not None:
        row_bytes = math.prod(upload.images.shape[1:]) * upload.images.dtype.itemsize + 10  # + a label
        image_rows = chunk_rows(row_bytes, chunk_images, max_message_bytes)
    if upload.encodings is not None and upload.encoding_labels is not None:
        row_bytes = (math.prod(upload.encodings.shape[1:]) * upload.encodings.dtype.itemsize
                     + math.prod(upload.encoding_labels.shape[1:]) * 4)
        encoding_rows = chunk_rows(row_bytes, chunk_images, max_message_bytes)
    return _requests(upload, image_rows, encoding_rows)


def _requests(upload: AuditUpload, image_rows: int, encoding_rows: int) -> Iterator[audit_pb2.StartAuditRequest]:
    yield audit_pb2.StartAuditRequest(spec=upload.spec)
    if upload.images is not None:
        images, labels = upload.images, upload.labels
        for start in range(0, len(images), image_rows):
            chunk = reconstruction_pb2.ReconstructionChunk(images=to_tensor(images[start:start + image_rows]))
            if labels is not None:
                chunk.labels.extend(labels[start:start + image_rows].tolist())
            yield audit_pb2.StartAuditRequest(reconstruction=chunk)
    if upload.encodings is not None and upload.encoding_labels is not None:
        encodings, mixed = upload.encodings, upload.encoding_labels
        for start in range(0, len(encodings), encoding_rows):
            rows = slice(start, start + encoding_rows)
            chunk = reconstruction_pb2.ReconstructionChunk(encodings=to_tensor(encodings[rows]),
                                                           encoding_labels=to_tensor(mixed[rows]))
            yield audit_pb2.StartAuditRequest(reconstruction=chunk)
