"""Reconstruction audits on the wire: ``ReconstructionSpec`` and its chunks → instahide_ops' reconstruction audit →
``AuditReport``.

The spec names the configuration under audit as Encode takes it (``InstaHideConfig``), so an audit measures
exactly what a deployment ships. The inputs are private images to encode T times (uploaded, or a server-side
``.npz`` with ``images`` and ``labels``), or encodings made elsewhere with their mixed labels and originals. The
attacks are instahide_ops' registered reconstruction attacks; each is handed only what its attacker holds
(the pool this server mixes in, the photos it was cut from, the keys of the simulated deployment).
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from instahide_client.instahide.v1 import audit_pb2, reconstruction_pb2, tensor_pb2
from instahide_client.tensors import numpy_dtype, to_tensor

from instahide_ops.audits.progress import CancelToken
from instahide_ops.audits.reconstruction import (
    AttackReport,
    AttackSettings,
    Deployment,
    LeakageReport,
    audit_deployment,
    audit_encodings,
    choose_attacks,
    get_attack,
)
from instahide_ops.audits.reconstruction.attack import KEYS, PHOTOS, POOL
from instahide_ops.audits.reconstruction.audit import DEFAULT_ENCODINGS_PER_IMAGE, MAX_ENCODINGS_PER_IMAGE
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import check_public_parameters
from instahide_ops.audits.reconstruction.scores import WINDOW
from instahide_ops.errors import InvalidInputError
from instahide_server.audit.inputs import check_unit_range, concatenate, decode, dtype_name, read_images
from instahide_server.audit.kinds import Accepted, ProgressCallback
from instahide_server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from instahide_server.transform.instahide import MODE_VALUES, encode_params
from instahide_server.transform.pools import PoolRegistry

_IMAGE_DTYPES = (tensor_pb2.DATA_TYPE_UINT8, tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)
_FLOAT_DTYPES = (tensor_pb2.DATA_TYPE_FLOAT16, tensor_pb2.DATA_TYPE_FLOAT32)
_CONFIG = "spec.reconstruction.instahide"
# Why this server cannot hand an attacker what it holds (the attacks that need it are refused when named).
_MISSING = {PHOTOS: "this server's public pool was given as images (--pool), so it holds no photos the pool was "
                    "cut from; start it with --pool-photos, or with the bundled pool"}


@dataclass(frozen=True)
class ReconstructionParams:
    """The spec with its defaults resolved."""

    deployment: Deployment  # encodings_per_image 0 for precomputed encodings without an explicit T (E / N)
    precomputed: bool
    attacks: tuple[str, ...]
    transform = "instahide"


@dataclass(frozen=True)
class ReconstructionInputs:
    """Everything one audit job needs; held in memory only, for as long as the job."""

    images: np.ndarray  # (N, H, W, C) private images (the originals, for precomputed encodings)
    labels: np.ndarray | None  # (N,) int64; None for precomputed encodings
    encodings: np.ndarray | None = None  # (E, H, W, C) float32
    encoding_labels: np.ndarray | None = None  # (E, classes) float32
    encodings_per_image: int = 0  # T of precomputed encodings when the spec left it to E / N

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, height, width, channels = self.images.shape
        return height, width, channels


class ReconstructionKind:
    """The ``kinds.AuditKind`` of reconstruction audits: each transform audited (``ReconstructionSpec.transform``'s
    members) has its own adapter with the same methods; this one hands each call to the spec's."""

    field = "reconstruction"

    def __init__(self, transforms: dict) -> None:
        """``transforms``: member name of ``ReconstructionSpec.transform`` -> its adapter."""
        self._transforms = transforms

    def accept(self, spec: audit_pb2.AuditSpec) -> Accepted:
        transform = spec.reconstruction.WhichOneof("transform") or "instahide"
        adapter = self._transforms.get(transform)
        if adapter is None:
            raise InvalidArgument(f"spec.reconstruction.transform: {transform!r} audits are not run here",
                                  "spec.reconstruction.transform")
        return adapter.accept(spec)

    def _adapter(self, accepted: Accepted):
        return self._transforms[accepted.params.transform]

    def upload(self, accepted: Accepted, *, max_images: int):
        return self._adapter(accepted).upload(accepted, max_images=max_images)

    def read_dataset(self, path: pathlib.Path, accepted: Accepted, *, max_images: int):
        return self._adapter(accepted).read_dataset(path, accepted, max_images=max_images)

    def prepare(self, accepted: Accepted, inputs) -> None:
        self._adapter(accepted).prepare(accepted, inputs)

    def describe(self, accepted: Accepted, inputs) -> str:
        return self._adapter(accepted).describe(accepted, inputs)

    def run(self, accepted: Accepted, inputs, *, progress: ProgressCallback,
            cancel: CancelToken) -> audit_pb2.AuditReport:
        return self._adapter(accepted).run(accepted, inputs, progress=progress, cancel=cancel)


class InstaHideReconstruction:
    """The InstaHide half of ``ReconstructionKind``: simulated deployments and precomputed encodings."""

    def __init__(self, pools: PoolRegistry, *, device, settings: AttackSettings) -> None:
        self._pools = pools
        self._device = device
        self._settings = settings

    # Before the audit is queued.

    def accept(self, spec: audit_pb2.AuditSpec) -> Accepted:
        message = spec.reconstruction
        config = message.instahide
        if config.return_keys:
            raise InvalidArgument(f"{_CONFIG}.return_keys: an audit returns no keys", f"{_CONFIG}.return_keys")
        precomputed = message.precomputed_encodings
        if spec.dataset and precomputed:
            raise InvalidArgument("spec.dataset: a dataset holds private images, not precomputed encodings; "
                                  "upload the encodings instead", "spec.dataset")
        per_image = message.encodings_per_image or (0 if precomputed else DEFAULT_ENCODINGS_PER_IMAGE)
        params = encode_params(config, field=_CONFIG)
        deployment = Deployment(params, per_image, config.num_classes or None,
                                config.seed if config.HasField("seed") else None)
        with _named_fields():
            if precomputed:
                check_public_parameters(k=params.resolved_k, encodings_per_image=max(per_image, 1), mode=params.mode)
                if per_image > MAX_ENCODINGS_PER_IMAGE:
                    raise InvalidInputError(f"must be in [1, {MAX_ENCODINGS_PER_IMAGE}], got {per_image}",
                                            field="encodings_per_image")
            else:
                deployment.validate()
            chosen = choose_attacks(list(spec.attacks), extra=list(spec.extra_attacks),
                                    skipped=list(spec.skipped_attacks),
                                    evidence=() if precomputed else (KEYS, POOL, PHOTOS))
        for attack in chosen:
            if PHOTOS in attack.holds and not self._pools.holds_photos:
                raise FailedPrecondition(f"spec.attacks: {attack.name} holds the photos the pool was cut from, but "
                                         f"{_MISSING[PHOTOS]}", "spec.attacks")
        resolved = audit_pb2.AuditSpec()
        resolved.CopyFrom(spec)
        resolved.ClearField("extra_attacks")
        resolved.ClearField("skipped_attacks")
        resolved.attacks[:] = [attack.name for attack in chosen]
        instahide = resolved.reconstruction.instahide
        instahide.mode = MODE_VALUES[params.mode]
        instahide.k = params.resolved_k
        resolved.reconstruction.encodings_per_image = per_image
        return Accepted(resolved, ReconstructionParams(deployment, precomputed, tuple(resolved.attacks)),
                        dataset=spec.dataset)

    def upload(self, accepted: Accepted, *, max_images: int) -> Upload:
        return Upload(accepted.params, max_images=max_images)

    def read_dataset(self, path: pathlib.Path, accepted: Accepted, *, max_images: int) -> ReconstructionInputs:
        images, labels = read_images(path, accepted.dataset, max_images=max_images, labels_required=True)
        return checked_images(accepted.params, images, labels)

    def prepare(self, accepted: Accepted, inputs: ReconstructionInputs) -> None:
        for name in accepted.params.attacks:
            with _named_fields():
                get_attack(name).check(inputs.image_shape)
        if not accepted.params.precomputed:
            self._pools.get(inputs.image_shape)  # builds it once, or refuses

    def describe(self, accepted: Accepted, inputs: ReconstructionInputs) -> str:
        params = accepted.params
        return (f"reconstruction of {len(inputs.images)} images, k={params.deployment.params.resolved_k}, "
                f"T={params.deployment.encodings_per_image or inputs.encodings_per_image}, "
                f"precomputed={params.precomputed}, attacks {', '.join(params.attacks)}")

    # In the audit's thread.

    def run(self, accepted: Accepted, inputs: ReconstructionInputs, *, progress: ProgressCallback,
            cancel: CancelToken) -> audit_pb2.AuditReport:
        params: ReconstructionParams = accepted.params
        deployment = params.deployment
        if params.precomputed:
            assert inputs.encodings is not None and inputs.encoding_labels is not None
            report = audit_encodings(inputs.encodings, inputs.encoding_labels, inputs.images,
                                     k=deployment.params.resolved_k,
                                     encodings_per_image=deployment.encodings_per_image or inputs.encodings_per_image,
                                     mode=deployment.params.mode, attacks=params.attacks, settings=self._settings,
                                     device=self._device, progress=progress, cancel=cancel)
        else:
            photos = any(PHOTOS in get_attack(name).holds for name in params.attacks)
            report = audit_deployment(inputs.images, inputs.labels, deployment,
                                      pool=self._pools.get(inputs.image_shape),
                                      photos=self._pools.photos if photos else None,
                                      attacks=params.attacks, settings=self._settings, device=self._device,
                                      progress=progress, cancel=cancel)
        return report_message(report)


class Upload:
    """The chunks of one reconstruction audit, checked as they arrive (dtype, rank, shape agreement across
    chunks, the image limit), so that an oversized or inconsistent upload is refused before it is all in memory."""

    def __init__(self, params: ReconstructionParams, *, max_images: int) -> None:
        self._params = params
        self._max_images = max_images
        self._images: list[np.ndarray] = []
        self._labels: list[int] = []
        self._encodings: list[np.ndarray] = []
        self._encoding_labels: list[np.ndarray] = []
        self._count = {"images": 0, "encodings": 0}

    def add(self, chunk: reconstruction_pb2.ReconstructionChunk) -> None:
        """Take one chunk.

        Raises:
            InvalidArgument: a malformed or inconsistent chunk.
            ResourceExhausted: more images (or encodings) than the server's limit.
        """
        if not self._params.precomputed:
            if chunk.HasField("encodings") or chunk.HasField("encoding_labels"):
                field = "encodings" if chunk.HasField("encodings") else "encoding_labels"
                raise InvalidArgument(f"{field}: only with spec.reconstruction.precomputed_encodings", field)
        elif chunk.labels:
            raise InvalidArgument("labels: not used with precomputed encodings (send encoding_labels)", "labels")
        if chunk.HasField("images"):
            self._images.append(self._tensor(chunk.images, "images", _IMAGE_DTYPES, self._images))
        self._labels.extend(chunk.labels)
        if chunk.HasField("encodings"):
            self._encodings.append(self._tensor(chunk.encodings, "encodings", _FLOAT_DTYPES, self._encodings))
        if chunk.HasField("encoding_labels"):
            self._encoding_labels.append(self._encoding_label_chunk(chunk.encoding_labels))

    def finish(self) -> ReconstructionInputs:
        """Check the counts and concatenate the chunks.

        Raises:
            InvalidArgument: fewer than 2 images, or counts that do not match.
        """
        images = concatenate(self._images, empty=(0, 0, 0, 0))
        labels = np.asarray(self._labels, dtype=np.int64)
        if not self._params.precomputed:
            return checked_images(self._params, images, labels)
        encodings = concatenate(self._encodings, empty=(0, 0, 0, 0))
        encoding_labels = concatenate(self._encoding_labels, empty=(0, 0), dtype=np.float32)
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
        return ReconstructionInputs(images, None, encodings.astype(np.float32, copy=False),
                                    encoding_labels.astype(np.float32, copy=False),
                                    encodings_per_image=max(1, round(len(encodings) / len(images))))

    def _tensor(self, tensor: tensor_pb2.Tensor, field: str, dtypes: tuple[int, ...],
                previous: list[np.ndarray]) -> np.ndarray:
        if tensor.dtype not in dtypes:
            names = " or ".join(tensor_pb2.DataType.Name(d) for d in dtypes)
            raise InvalidArgument(f"{field}.dtype: expected {names}, got {dtype_name(tensor.dtype)}",
                                  f"{field}.dtype")
        shape = list(tensor.shape)
        if len(shape) != 4 or any(d <= 0 for d in shape):
            raise InvalidArgument(f"{field}.shape: expected (N, H, W, C) with positive dimensions, got {shape}",
                                  f"{field}.shape")
        check_image_side(shape, f"{field}.shape")
        if previous and (tuple(shape[1:]) != previous[0].shape[1:] or numpy_dtype(tensor.dtype) != previous[0].dtype):
            raise InvalidArgument(f"{field}.shape: every chunk must hold images of one shape and dtype; got "
                                  f"{shape[1:]} {dtype_name(tensor.dtype)} after {list(previous[0].shape[1:])} "
                                  f"{previous[0].dtype}", f"{field}.shape")
        self._count[field] += shape[0]
        if self._count[field] > self._max_images:
            raise ResourceExhausted(f"{field}: more than this server's limit of {self._max_images} per audit",
                                    field)
        array = decode(tensor, field)
        if array.dtype != np.uint8:
            check_unit_range(array, field)
        return array

    def _encoding_label_chunk(self, tensor: tensor_pb2.Tensor) -> np.ndarray:
        if tensor.dtype != tensor_pb2.DATA_TYPE_FLOAT32:
            raise InvalidArgument(f"encoding_labels.dtype: expected DATA_TYPE_FLOAT32, got "
                                  f"{dtype_name(tensor.dtype)}", "encoding_labels.dtype")
        shape = list(tensor.shape)
        if len(shape) != 2 or shape[1] <= 0:
            raise InvalidArgument(f"encoding_labels.shape: expected (E, classes), got {shape}",
                                  "encoding_labels.shape")
        if self._encoding_labels and shape[1] != self._encoding_labels[0].shape[1]:
            raise InvalidArgument(f"encoding_labels.shape: {shape[1]} classes after "
                                  f"{self._encoding_labels[0].shape[1]}", "encoding_labels.shape")
        labels = decode(tensor, "encoding_labels")
        # Mixed labels hold private coefficients; the attack refuses anything else, but only once queued.
        if not np.isfinite(labels).all() or (labels < 0).any() or (labels.sum(axis=1) > 1 + 1e-5).any():
            raise InvalidArgument("encoding_labels: mixed labels must be finite and non-negative, each row "
                                  "summing to at most 1", "encoding_labels.content")
        return labels


def checked_images(params: ReconstructionParams, images: np.ndarray, labels: np.ndarray) -> ReconstructionInputs:
    """Check private images and their labels (uploaded or from a dataset) for a simulated deployment."""
    if len(images) < 2:
        raise InvalidArgument(f"images: an audit needs at least 2 private images, got {len(images)}", "images")
    check_image_side(images.shape, "images.shape")
    if len(labels) != len(images):
        raise InvalidArgument(f"labels: {len(labels)} labels for {len(images)} images; need one per image", "labels")
    if labels.min() < 0:
        raise InvalidArgument(f"labels: must not be negative, got {int(labels.min())}", "labels")
    num_classes = params.deployment.num_classes
    if num_classes is not None and labels.max() >= num_classes:
        raise InvalidArgument(f"labels: label {int(labels.max())} is out of range for {_CONFIG}.num_classes = "
                              f"{num_classes}", "labels")
    return ReconstructionInputs(images, labels)


def check_image_side(shape, field: str) -> None:
    """Images smaller than the SSIM window cannot be scored; refuse them before the audit is queued."""
    height, width = shape[1], shape[2]
    if min(height, width) < WINDOW:
        raise InvalidArgument(f"{field}: images must be at least {WINDOW}x{WINDOW} pixels (the SSIM window of the "
                              f"scores), got {height}x{width}", field)


_PATHS = {"attacks": "spec.attacks", "encodings_per_image": "spec.reconstruction.encodings_per_image"}


@contextlib.contextmanager
def _named_fields() -> Iterator[None]:
    """Re-raise instahide_ops' ``InvalidInputError`` as INVALID_ARGUMENT naming the spec's field."""
    try:
        yield
    except InvalidInputError as exc:
        path = _PATHS.get(exc.field, f"{_CONFIG}.{exc.field.removeprefix('config.')}")
        raise InvalidArgument(f"{path}: {exc.reason}", path) from None


def report_message(report: LeakageReport) -> audit_pb2.AuditReport:
    """The wire form of a leakage report: a row per attack, then the reconstruction's picture, sizes and pool."""
    message = audit_pb2.AuditReport(device=report.device, seconds=report.seconds)
    for name, attack in report.attacks.items():
        message.attacks.add(attack=name, title=attack.attack.title, threat=attack.attack.threat,
                            bound=attack.attack.bound,
                            stage_seconds={stage: float(s) for stage, s in attack.stage_seconds.items()},
                            reconstruction=attack_scores(attack))
    message.reconstruction.CopyFrom(reconstruction_pb2.ReconstructionReport(
        grid_png=report.grid_png, grid_attack=report.grid_attack, images=report.images, encodings=report.encodings,
        pool_images=report.pool_images, pool_fingerprint=report.pool_fingerprint, known_pairs=report.known_pairs,
        curves_png=report.curves_png))
    for point in report.curves:
        message.reconstruction.curves.add(attack=point.attack, axis=point.axis, value=point.value,
                                          mean_ssim=point.mean_ssim)
    return message


def attack_scores(attack: AttackReport) -> reconstruction_pb2.ReconstructionScores:
    """One attack's challenge scores, recovery fractions, histogram and recovered images."""
    recovery = attack.recovery
    scores = reconstruction_pb2.ReconstructionScores(
        max_ssim=attack.scores.max_ssim, mean_ssim=attack.scores.mean_ssim, min_l2=attack.scores.min_l2,
        mean_l2=attack.scores.mean_l2,
        recovered_above_0_5=_fraction(recovery.fractions, 0.5),
        recovered_above_0_8=_fraction(recovery.fractions, 0.8),
        best_ssim=[float(v) for v in recovery.best_ssim.tolist()],
        best_match=[int(v) for v in recovery.best_match.tolist()],
        recovered=to_tensor(np.ascontiguousarray(attack.recovered.detach().cpu().numpy(), dtype=np.float32)),
    )
    for extra in ("public_coverage", "hit_rate", "permutation_accuracy"):
        if getattr(attack, extra) is not None:
            setattr(scores, extra, getattr(attack, extra))
    if attack.attack_success is not None:
        scores.attack_success.CopyFrom(reconstruction_pb2.AttackSuccess(**attack.attack_success.to_dict()))
    edges = [float(v) for v in recovery.histogram_edges.tolist()]
    for lower, upper, count in zip(edges[:-1], edges[1:], recovery.histogram_counts.tolist(), strict=True):
        scores.best_ssim_histogram.add(lower=lower, upper=upper, count=int(count))
    return scores


def _fraction(fractions: dict[float, float], threshold: float) -> float:
    for key, value in fractions.items():
        if abs(float(key) - threshold) < 1e-9:
            return float(value)
    return 0.0

