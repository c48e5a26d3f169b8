"""The StartAudit stream → a checked ``AuditInput`` (the arguments of one ``audit_deployment`` call).

``check_spec`` checks the first message's spec (defaults resolved); ``Upload`` gathers the data
chunks that follow, checking each as it arrives (dtype, rank, shape agreement across chunks, the
image limit) so that an oversized or inconsistent upload is refused before it is all in memory;
``Upload.finish`` checks the counts once the client half-closes. ``load_dataset`` reads a
server-side ``.npz`` named by the spec, refusing any path that leaves the data root. Every refusal
names the request field (``spec.k``, ``images.shape``, ``encoding_labels``…).
"""

from __future__ import annotations

import os
import pathlib
import zipfile
import zlib
from dataclasses import dataclass, replace

import numpy as np
from instahide_client._convert import TensorFormatError, numpy_dtype, to_numpy
from instahide_client.instahide.v1 import audit_pb2, tensor_pb2, transform_pb2

from instahide_ops.transforms.instahide.encode import MAX_K
from instahide_server.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted

DEFAULT_K = 6
DEFAULT_ENCODINGS_PER_IMAGE = 50
MAX_ENCODINGS_PER_IMAGE = 1000
MIN_K = 3  # a cross-dataset mix the attacker handles holds at least one public image beside two private ones
MIN_IMAGE_SIDE = 7  # the 7x7 window of the SSIM the scores use (instahide_ops.audits.reconstruction.scores.ssim)
# The ciphertext-only attacker handles cross-dataset mixes only (instahide_ops raises for "inside").
SUPPORTED_MODES = {transform_pb2.ENCODE_MODE_UNSPECIFIED: "cross", transform_pb2.ENCODE_MODE_CROSS: "cross"}
_IMAGE_DTYPES = (tensor_pb2.DATA_TYPE_UINT8, tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)
_FLOAT_DTYPES = (tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)


@dataclass(frozen=True)
class AuditParams:
    """The spec with its defaults resolved."""

    mode: str
    k: int
    encodings_per_image: int  # 0 for precomputed encodings without an explicit T: taken from E / N
    num_classes: int | None
    seed: int | None
    key_aware: bool
    pool_aware: bool
    photo_aware: bool
    precomputed: bool
    dataset: str


@dataclass(frozen=True)
class AuditInput:
    """Everything one audit job needs; held in memory only, for as long as the job."""

    params: AuditParams
    images: np.ndarray  # (N, H, W, C) private images (the originals, for precomputed encodings)
    labels: np.ndarray | None  # (N,) int64; None for precomputed encodings
    encodings: np.ndarray | None = None  # (E, H, W, C) float
    encoding_labels: np.ndarray | None = None  # (E, classes) float32

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, height, width, channels = self.images.shape
        return height, width, channels


def check_spec(spec: audit_pb2.AuditSpec) -> AuditParams:
    """Resolve the spec's defaults and check its ranges.

    Raises:
        InvalidArgument: a field out of range or an unsupported combination, named in the message.
    """
    mode = SUPPORTED_MODES.get(spec.mode)
    if mode is None:
        name = transform_pb2.EncodeMode.Name(spec.mode) if spec.mode in transform_pb2.EncodeMode.values() \
            else str(spec.mode)
        raise InvalidArgument(f"spec.mode: the attacker supports ENCODE_MODE_CROSS only, got {name}", "spec.mode")
    k = spec.k or DEFAULT_K
    if not MIN_K <= k <= MAX_K:
        raise InvalidArgument(f"spec.k: must be in [{MIN_K}, {MAX_K}], got {k}", "spec.k")
    if spec.encodings_per_image > MAX_ENCODINGS_PER_IMAGE:
        raise InvalidArgument(f"spec.encodings_per_image: must be in [1, {MAX_ENCODINGS_PER_IMAGE}], got "
                              f"{spec.encodings_per_image}", "spec.encodings_per_image")
    if spec.dataset and spec.precomputed_encodings:
        raise InvalidArgument("spec.dataset: a dataset holds private images, not precomputed encodings; "
                              "upload the encodings instead", "spec.dataset")
    if spec.photo_aware_attack and spec.precomputed_encodings:
        raise InvalidArgument("spec.photo_aware_attack: not for precomputed encodings (the photos their pool was "
                              "cut from are unknown)", "spec.photo_aware_attack")
    encodings_per_image = spec.encodings_per_image
    if not encodings_per_image and not spec.precomputed_encodings:
        encodings_per_image = DEFAULT_ENCODINGS_PER_IMAGE
    return AuditParams(
        mode=mode, k=k, encodings_per_image=encodings_per_image, num_classes=spec.num_classes or None,
        seed=spec.seed if spec.HasField("seed") else None,
        key_aware=spec.key_aware_bound if spec.HasField("key_aware_bound") else True,
        pool_aware=spec.pool_aware_attack if spec.HasField("pool_aware_attack") else True,
        photo_aware=spec.photo_aware_attack,
        precomputed=spec.precomputed_encodings, dataset=spec.dataset,
    )


class Upload:
    """The data chunks of one StartAudit stream, checked as they arrive."""

    def __init__(self, params: AuditParams, *, max_images: int) -> None:
        self._params = params
        self._max_images = max_images
        self._images: list[np.ndarray] = []
        self._labels: list[int] = []
        self._encodings: list[np.ndarray] = []
        self._encoding_labels: list[np.ndarray] = []
        self._count = {"images": 0, "encodings": 0}

    def add(self, request: audit_pb2.StartAuditRequest) -> None:
        """Take one data chunk (a message after the first, or the data part of the first).

        Raises:
            InvalidArgument: a malformed or inconsistent chunk.
            ResourceExhausted: more images (or encodings) than the server's limit.
        """
        has_data = any(request.HasField(f) for f in ("images", "encodings", "encoding_labels")) or request.labels
        if self._params.dataset and has_data:
            raise InvalidArgument("spec.dataset: an audit of a server-side dataset takes no uploaded data",
                                  "spec.dataset")
        if not self._params.precomputed:
            if request.HasField("encodings") or request.HasField("encoding_labels"):
                field = "encodings" if request.HasField("encodings") else "encoding_labels"
                raise InvalidArgument(f"{field}: only with spec.precomputed_encodings", field)
        elif request.labels:
            raise InvalidArgument("labels: not used with spec.precomputed_encodings (send encoding_labels)",
                                  "labels")
        if request.HasField("images"):
            self._images.append(self._tensor(request.images, "images", _IMAGE_DTYPES, self._images))
        self._labels.extend(request.labels)
        if request.HasField("encodings"):
            self._encodings.append(self._tensor(request.encodings, "encodings", _FLOAT_DTYPES, self._encodings))
        if request.HasField("encoding_labels"):
            self._encoding_labels.append(self._encoding_label_chunk(request.encoding_labels))

    def finish(self) -> AuditInput:
        """Check the counts and concatenate the chunks.

        Raises:
            InvalidArgument: fewer than 2 images, or counts that do not match.
        """
        images = _concatenate(self._images, "images")
        labels = np.asarray(self._labels, dtype=np.int64)
        if not self._params.precomputed:
            return checked_images(self._params, images, labels)
        encodings = _concatenate(self._encodings, "encodings")
        encoding_labels = _concatenate(self._encoding_labels, "encoding_labels")
        if len(images) < 2:
            raise InvalidArgument(f"images: an audit needs at least 2 original images, got {len(images)}", "images")
        if len(encodings) < 2:
            raise InvalidArgument(f"encodings: need at least 2 encodings, got {len(encodings)}", "encodings")
        if len(encoding_labels) != len(encodings):
            raise InvalidArgument(f"encoding_labels: {len(encoding_labels)} label rows for {len(encodings)} "
                                  "encodings; need one row per encoding", "encoding_labels")
        if encodings.shape[1:] != images.shape[1:]:
            raise InvalidArgument(f"encodings.shape: encodings of {list(encodings.shape[1:])} but original images "
                                  f"of {list(images.shape[1:])}", "encodings.shape")
        params = self._params
        if not params.encodings_per_image:
            params = replace(params, encodings_per_image=max(1, round(len(encodings) / len(images))))
        return AuditInput(params, images, None, encodings.astype(np.float32, copy=False),
                          encoding_labels.astype(np.float32, copy=False))

    def _tensor(self, tensor: tensor_pb2.Tensor, field: str, dtypes: tuple[int, ...],
                previous: list[np.ndarray]) -> np.ndarray:
        if tensor.dtype not in dtypes:
            names = " or ".join(tensor_pb2.DataType.Name(d) for d in dtypes)
            raise InvalidArgument(f"{field}.dtype: expected {names}, got {_dtype_name(tensor.dtype)}",
                                  f"{field}.dtype")
        shape = list(tensor.shape)
        if len(shape) != 4 or any(d <= 0 for d in shape):
            raise InvalidArgument(f"{field}.shape: expected (N, H, W, C) with positive dimensions, got {shape}",
                                  f"{field}.shape")
        _check_image_side(shape, f"{field}.shape")
        if previous and (tuple(shape[1:]) != previous[0].shape[1:] or numpy_dtype(tensor.dtype) != previous[0].dtype):
            raise InvalidArgument(f"{field}.shape: every chunk must hold images of one shape and dtype; got "
                                  f"{shape[1:]} {_dtype_name(tensor.dtype)} after {list(previous[0].shape[1:])} "
                                  f"{previous[0].dtype}", f"{field}.shape")
        self._count[field] += shape[0]
        if self._count[field] > self._max_images:
            raise ResourceExhausted(f"{field}: more than this server's limit of {self._max_images} per audit",
                                    field)
        array = _decode(tensor, field)
        if array.dtype != np.uint8:
            _check_unit_range(array, field)
        return array

    def _encoding_label_chunk(self, tensor: tensor_pb2.Tensor) -> np.ndarray:
        if tensor.dtype != tensor_pb2.DATA_TYPE_FLOAT32:
            raise InvalidArgument(f"encoding_labels.dtype: expected DATA_TYPE_FLOAT32, got "
                                  f"{_dtype_name(tensor.dtype)}", "encoding_labels.dtype")
        shape = list(tensor.shape)
        if len(shape) != 2 or shape[1] <= 0:
            raise InvalidArgument(f"encoding_labels.shape: expected (E, classes), got {shape}",
                                  "encoding_labels.shape")
        if self._encoding_labels and shape[1] != self._encoding_labels[0].shape[1]:
            raise InvalidArgument(f"encoding_labels.shape: {shape[1]} classes after "
                                  f"{self._encoding_labels[0].shape[1]}", "encoding_labels.shape")
        labels = _decode(tensor, "encoding_labels")
        # Mixed labels hold private coefficients; the attack refuses anything else, but only once queued.
        if not np.isfinite(labels).all() or (labels < 0).any() or (labels.sum(axis=1) > 1 + 1e-5).any():
            raise InvalidArgument("encoding_labels: mixed labels must be finite and non-negative, each row "
                                  "summing to at most 1", "encoding_labels.content")
        return labels


def checked_images(params: AuditParams, images: np.ndarray, labels: np.ndarray) -> AuditInput:
    """Check private images and their labels (uploaded or from a dataset) for a simulated deployment."""
    if len(images) < 2:
        raise InvalidArgument(f"images: an audit needs at least 2 private images, got {len(images)}", "images")
    _check_image_side(images.shape, "images.shape")
    if len(labels) != len(images):
        raise InvalidArgument(f"labels: {len(labels)} labels for {len(images)} images; need one per image",
                              "labels")
    if labels.min() < 0:
        raise InvalidArgument(f"labels: must not be negative, got {int(labels.min())}", "labels")
    if params.num_classes is not None and labels.max() >= params.num_classes:
        raise InvalidArgument(f"labels: label {int(labels.max())} is out of range for spec.num_classes = "
                              f"{params.num_classes}", "labels")
    return AuditInput(params, images, labels)


def load_dataset(data_root: pathlib.Path | None, name: str, params: AuditParams, *, max_images: int) -> AuditInput:
    """Read ``name`` (a .npz with ``images`` and ``labels``) under ``data_root``. Blocking: run in a thread.

    Raises:
        FailedPrecondition: the server has no data root.
        PermissionDenied: the name is absolute or leads out of the data root (``..``, a symlink).
        NotFound: no such file.
        InvalidArgument: a name no file can have, or a file that is not a .npz with usable ``images`` and
            ``labels``.
        ResourceExhausted: more images than the server's limit.
    """
    if data_root is None:
        raise FailedPrecondition("spec.dataset: this server has no --data-root; upload the images instead",
                                 "spec.dataset")
    if "\0" in name:
        raise InvalidArgument("spec.dataset: a file name cannot hold a NUL character", "spec.dataset")
    relative = pathlib.PurePosixPath(name)
    if relative.is_absolute() or os.path.isabs(name) or ".." in relative.parts:
        raise PermissionDenied(f"spec.dataset: {name!r} must be a relative path inside the data root",
                               "spec.dataset")
    root = data_root.resolve()
    try:
        path = (root / relative).resolve()
        inside = path.is_relative_to(root)
        found = inside and path.is_file()
    except OSError as exc:  # e.g. ENAMETOOLONG
        raise InvalidArgument(f"spec.dataset: not a usable file name ({exc.strerror})", "spec.dataset") from None
    if not inside:
        raise PermissionDenied(f"spec.dataset: {name!r} leads outside the data root", "spec.dataset")
    if not found:
        raise NotFound(f"spec.dataset: no dataset {name!r} under the data root", "spec.dataset")
    try:
        images, labels = _read_npz(path, name, max_images)
    except _UNREADABLE as exc:  # not a zip, an empty file, a pickled array, a corrupt member
        raise InvalidArgument(f"spec.dataset: cannot read {name!r} as a .npz: {exc}", "spec.dataset") from None
    if images.dtype != np.uint8:
        _check_unit_range(images, "spec.dataset")
    return checked_images(params, images, labels)


# What reading an untrusted .npz can raise besides our own refusals.
_UNREADABLE = (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_npz(path: pathlib.Path, name: str, max_images: int) -> tuple[np.ndarray, np.ndarray]:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array under a .npz name
        raise InvalidArgument(f"spec.dataset: {name!r} holds one array, not a .npz with images and labels",
                              "spec.dataset")
    with loaded as data:
        missing = {"images", "labels"} - set(data.files)
        if missing:
            raise InvalidArgument(f"spec.dataset: {name!r} lacks {sorted(missing)}", "spec.dataset")
        images = data["images"]
        if images.ndim != 4 or 0 in images.shape[1:] or images.dtype not in (np.uint8, np.float16, np.float32):
            raise InvalidArgument(f"spec.dataset: {name!r} images must be (N, H, W, C) uint8 or float, got "
                                  f"{images.dtype} {list(images.shape)}", "spec.dataset")
        if len(images) > max_images:
            raise ResourceExhausted(f"spec.dataset: {len(images)} images, more than this server's "
                                    f"limit of {max_images} per audit", "spec.dataset")
        labels = np.asarray(data["labels"]).reshape(-1).astype(np.int64)
    return np.asarray(images), labels


def _decode(tensor: tensor_pb2.Tensor, field: str) -> np.ndarray:
    try:
        return to_numpy(tensor)
    except TensorFormatError as exc:
        raise InvalidArgument(f"{field}.{exc.field}: {exc}", f"{field}.{exc.field}") from None


def _concatenate(chunks: list[np.ndarray], field: str) -> np.ndarray:
    if not chunks:
        return np.zeros((0, 0, 0, 0), dtype=np.uint8) if field != "encoding_labels" else np.zeros((0, 0), np.float32)
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0].copy()


def _check_image_side(shape, field: str) -> None:
    """Images smaller than the SSIM window cannot be scored; refuse them before the audit is queued."""
    height, width = shape[1], shape[2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise InvalidArgument(f"{field}: images must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels (the SSIM "
                              f"window of the scores), got {height}x{width}", field)


def _check_unit_range(array: np.ndarray, field: str) -> None:
    if not np.isfinite(array).all() or np.abs(array).max() > 1.0 + 1e-3:
        raise InvalidArgument(f"{field}: float images must be finite and in [-1, 1]", f"{field}.content")


def _dtype_name(value: int) -> str:
    return tensor_pb2.DataType.Name(value) if value in tensor_pb2.DataType.values() else str(value)
