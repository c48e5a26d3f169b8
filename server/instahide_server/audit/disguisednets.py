"""DisguisedNets reconstruction audits on the wire: ``ReconstructionSpec.disguised_nets`` and its image chunks →
instahide_ops' ``audit_disguise`` → ``AuditReport``.

The spec carries the key parameters under audit (never a key: a client that audits a stored key reads its
parameters with GetKey), the known pairs a Level-2 attacker holds and a seed. The inputs are private images with
optional labels (for the papers' attack success), uploaded or from a server-side ``.npz`` (``images``, optional
``labels``). The Level-1 attackers hold the public photos bundled with the service (never the owner's).
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from instahide_client.instahide.v1 import audit_pb2

from instahide_ops.audits.progress import CancelToken
from instahide_ops.audits.reconstruction import AttackSettings, get_attack
from instahide_ops.audits.reconstruction.disguisednets.audit import (
    DEFAULT_KNOWN_PAIRS,
    DisguiseDeployment,
    audit_disguise,
    choose,
)
from instahide_ops.errors import InvalidInputError
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.disguisednets import check_params
from instahide_ops.transforms.instahide.challenge import PUBLIC_SOURCE_NAMES
from instahide_server.audit import reconstruction
from instahide_server.audit.inputs import concatenate, read_images
from instahide_server.audit.kinds import Accepted, ProgressCallback
from instahide_server.audit.reconstruction import ReconstructionInputs
from instahide_server.errors import InvalidArgument
from instahide_server.transform.disguisednets import param_fields, params_from_message, params_message

_SPEC = "spec.reconstruction.disguised_nets"
_PATHS = {"attacks": "spec.attacks", "known_pairs": f"{_SPEC}.known_pairs", "images.shape": "images.shape"}


@dataclass(frozen=True)
class DisguisedNetsParams:
    """The spec with its defaults resolved."""

    deployment: DisguiseDeployment
    attacks: tuple[str, ...]
    transform = "disguised_nets"
    precomputed = False  # read by reconstruction.Upload: DisguisedNets audits take private images only


@functools.cache
def public_photos() -> list[np.ndarray]:
    """The photos every Level-1 attacker holds: the bundled public ones (loaded once)."""
    return list(bundled_sources(PUBLIC_SOURCE_NAMES).values())


@contextlib.contextmanager
def _named_fields() -> Iterator[None]:
    """instahide_ops' errors as INVALID_ARGUMENT naming the spec's field."""
    try:
        with param_fields(f"{_SPEC}.params"):  # the key's parameters; it re-raises the rest
            yield
    except InvalidInputError as exc:
        path = _PATHS.get(exc.field, f"{_SPEC}.{exc.field}")
        raise InvalidArgument(f"{path}: {exc.reason}", path) from None


class DisguisedNetsReconstruction:
    """The DisguisedNets half of ``reconstruction.ReconstructionKind``."""

    def __init__(self, *, device, settings: AttackSettings) -> None:
        self._device = device
        self._settings = settings

    def accept(self, spec: audit_pb2.AuditSpec) -> Accepted:
        message = spec.reconstruction
        if message.encodings_per_image or message.precomputed_encodings:
            field = "encodings_per_image" if message.encodings_per_image else "precomputed_encodings"
            raise InvalidArgument(f"spec.reconstruction.{field}: InstaHide's; a DisguisedNets audit disguises each "
                                  "private image once", f"spec.reconstruction.{field}")
        config = message.disguised_nets
        params = params_from_message(config.params, field=f"{_SPEC}.params")
        pairs = config.known_pairs if config.HasField("known_pairs") else DEFAULT_KNOWN_PAIRS
        deployment = DisguiseDeployment(params, pairs, config.seed if config.HasField("seed") else None,
                                        curves=not config.skip_curves)
        with _named_fields():
            r, s = params.block
            check_params(params, (r, s, 3))  # every check but the image shape's, which comes with the images
            deployment.validate((r, s, 3))
            chosen = choose(deployment, list(spec.attacks), extra=list(spec.extra_attacks),
                            skipped=list(spec.skipped_attacks))
        resolved = audit_pb2.AuditSpec()
        resolved.CopyFrom(spec)
        resolved.ClearField("extra_attacks")
        resolved.ClearField("skipped_attacks")
        resolved.attacks[:] = [attack.name for attack in chosen]
        resolved.reconstruction.disguised_nets.params.CopyFrom(params_message(params))
        resolved.reconstruction.disguised_nets.known_pairs = pairs
        return Accepted(resolved, DisguisedNetsParams(deployment, tuple(resolved.attacks)), dataset=spec.dataset)

    def upload(self, accepted: Accepted, *, max_images: int) -> Upload:
        return Upload(accepted.params, max_images=max_images)

    def read_dataset(self, path: pathlib.Path, accepted: Accepted, *, max_images: int) -> ReconstructionInputs:
        images, labels = read_images(path, accepted.dataset, max_images=max_images, labels_required=False)
        return checked_images(images, np.zeros(0, dtype=np.int64) if labels is None else labels)

    def prepare(self, accepted: Accepted, inputs: ReconstructionInputs) -> None:
        deployment = accepted.params.deployment
        with _named_fields():
            deployment.validate(inputs.image_shape, len(inputs.images))
            for name in accepted.params.attacks:
                get_attack(name).check_images(deployment.params, inputs.image_shape)

    def describe(self, accepted: Accepted, inputs: ReconstructionInputs) -> str:
        deployment = accepted.params.deployment
        params = deployment.params
        return (f"DisguisedNets reconstruction of {len(inputs.images)} images, {params.method} "
                f"{params.block[0]}x{params.block[1]}, {deployment.known_pairs} known pairs, attacks "
                f"{', '.join(accepted.params.attacks)}")

    def run(self, accepted: Accepted, inputs: ReconstructionInputs, *, progress: ProgressCallback,
            cancel: CancelToken) -> audit_pb2.AuditReport:
        report = audit_disguise(inputs.images, inputs.labels, accepted.params.deployment, photos=public_photos(),
                                attacks=accepted.params.attacks, settings=self._settings, device=self._device,
                                progress=progress, cancel=cancel)
        return reconstruction.report_message(report)


class Upload(reconstruction.Upload):
    """Private images and, optionally, one label per image."""

    def finish(self) -> ReconstructionInputs:
        images = concatenate(self._images, empty=(0, 0, 0, 0))
        return checked_images(images, np.asarray(self._labels, dtype=np.int64))


def checked_images(images: np.ndarray, labels: np.ndarray) -> ReconstructionInputs:
    """Private images and their labels (none, or one per image); labels None when there are none."""
    if len(images) < 2:
        raise InvalidArgument(f"images: an audit needs at least 2 private images, got {len(images)}", "images")
    reconstruction.check_image_side(images.shape, "images.shape")
    if len(labels) and len(labels) != len(images):
        raise InvalidArgument(f"labels: {len(labels)} labels for {len(images)} images; send one per image, or "
                              "none", "labels")
    if len(labels) and labels.min() < 0:
        raise InvalidArgument(f"labels: must not be negative, got {int(labels.min())}", "labels")
    return ReconstructionInputs(images, labels if len(labels) else None)
