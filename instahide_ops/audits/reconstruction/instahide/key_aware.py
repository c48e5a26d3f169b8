"""The key-aware bound: the same recovery, given each encoding's true mapping and coefficients.

This is what an attacker holding the keys but not the masks (a leaked key store's mapping, a brute-forced
32-bit seed) gets, so it bounds what the ciphertext-only attack can reach. Given the public slots' pool
indices as well, the images they name more than once are solved alongside the privates instead of being
treated as noise (``joint_recovery``); the pool's pixels are never used. In an audit the bound also holds
whatever the audit's attacks without keys hold, so it bounds the strongest of them: with the public pool it
continues as the pool-aware attack does from the true pairs.
"""


from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from instahide_ops.audits.progress import CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import (
    KEYS,
    AttackerView,
    AttackResult,
    AttackSettings,
    register_attack,
)
from instahide_ops.audits.reconstruction.instahide import pool_aware
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import (
    STAGE_WEIGHTS,
    as_tensor,
    attack_device,
    check_challenge_arrays,
    pick_decryption,
    recovery_options,
)
from instahide_ops.audits.reconstruction.instahide.joint_recovery import recover_with_publics
from instahide_ops.audits.reconstruction.instahide.orientation import resolve_orientation
from instahide_ops.audits.reconstruction.instahide.pursuit import WORKING_BYTES
from instahide_ops.audits.reconstruction.instahide.recovery import recover_privates
from instahide_ops.errors import InvalidInputError

SHARED_PUBLICS_WEIGHT = 0.18  # the "shared_publics" stage's rough share of the time, as STAGE_WEIGHTS'


def key_aware_attack(encryption: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                     pair_indices: np.ndarray | torch.Tensor, coefficients: np.ndarray | torch.Tensor,
                     num_images: int, device: torch.device | str | None = None,
                     progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None, recovery_steps: int | None = None,
                     public_mean: torch.Tensor | float | None = None, k: int = 6,
                     public_indices: np.ndarray | torch.Tensor | None = None,
                     working_bytes: int = WORKING_BYTES) -> AttackResult:
    """Recover the private images knowing which two each encoding holds and with what coefficients.

    Args:
        encryption: (E, H, W, C) encodings.
        labels: (E, classes) mixed labels (checked for shape only).
        pair_indices: (E, 2) each encoding's private images.
        coefficients: (E, >= 2) their coefficients, private slots first (all k with ``public_indices``).
        num_images: the number of private images.
        public_indices: (E, k - 2) the pool index in each public slot, or None; with them the recovery
            continues with the reused publics as unknowns (stage "shared_publics").
        working_bytes: memory that stage's normal matrix may hold; it solves the publics that fit
            (``joint_recovery.unknowns_that_fit``).
        public_mean, recovery_steps, k: as for the ciphertext-only attack.
    """
    device = attack_device(encryption, device)
    encryption, _ = check_challenge_arrays(encryption, labels, device)
    members = as_tensor(pair_indices, device).long()
    all_weights = as_tensor(coefficients, device).float()
    weights = all_weights[:, :2]
    if members.shape != (len(encryption), 2):
        raise InvalidInputError(f"expected ({len(encryption)}, 2), got {list(members.shape)}", field="pair_indices")
    if int(members.min()) < 0 or int(members.max()) >= num_images:
        raise InvalidInputError(f"indices must lie in [0, {num_images})", field="pair_indices")
    if public_indices is not None:
        publics = as_tensor(public_indices, device).long()
        if publics.ndim != 2 or len(publics) != len(encryption) or all_weights.shape[1] != 2 + publics.shape[1]:
            raise InvalidInputError(f"expected ({len(encryption)}, {all_weights.shape[1] - 2}) to match the "
                                    f"coefficients' public slots, got {list(publics.shape)}", field="public_indices")
    options = recovery_options(encryption, k, recovery_steps, public_mean)
    magnitudes = encryption.abs()
    tracker = StageTracker(progress, cancel)
    with tracker.stage("recovery") as report:
        recovered = recover_privates(magnitudes, members, weights, num_images=num_images, report=report,
                                     **options)
    with tracker.stage("orientation") as report:
        recovered = resolve_orientation(recovered)
    if public_indices is not None and publics.shape[1] > 0:
        with tracker.stage("shared_publics") as report:
            recovered = recover_with_publics(magnitudes, torch.cat([members, publics], dim=1), all_weights,
                                             recovered, public_mean=options["public_mean"], report=report,
                                             working_bytes=working_bytes)
    return AttackResult(recovered.cpu().float(), pick_decryption(recovered, members, weights).cpu().float(),
                        members.cpu(), weights.cpu(), dict(tracker.seconds), str(device))


@register_attack
class KeyAware:
    """The bound: the attacker who holds each encoding's mapping and coefficients, but not the masks."""

    name = "key_aware"
    title = "key-aware bound"
    threat = ("holds the keys' mapping and coefficients (a leaked key store, a brute-forced seed) but not the "
              "masks, and whatever the audit's other attackers hold: an upper bound, not an attack")
    family = "instahide"
    holds = frozenset({KEYS})
    bound = True
    default = True
    starts_from = None

    def stages(self, view: AttackerView, settings: AttackSettings) -> dict[str, float]:
        weights = {"recovery": STAGE_WEIGHTS["recovery"], "orientation": STAGE_WEIGHTS["orientation"]}
        if view.keys is not None and view.keys.public_indices is not None and view.keys.public_indices.shape[1]:
            weights["shared_publics"] = SHARED_PUBLICS_WEIGHT
        if view.pool is not None:  # the public-mix stages run longer here (more EM steps)
            slower = pool_aware.BOUND_PUBLIC_MIX_STEPS / pool_aware.DEFAULT_PUBLIC_MIX_STEPS
            weights |= {stage: pool_aware.STAGE_WEIGHTS[stage] * slower for stage in ("public_mix", "restarts")}
        return weights

    def check(self, image_shape: tuple[int, int, int]) -> None:
        pass

    def run(self, view: AttackerView, *, start: AttackResult | None, settings: AttackSettings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> AttackResult:
        keys = view.keys
        if keys is None:
            raise InvalidInputError("the key-aware bound needs the keys", field="keys")
        bound = key_aware_attack(view.encryption, view.labels, pair_indices=keys.pair_indices,
                                 coefficients=keys.coefficients, public_indices=keys.public_indices,
                                 num_images=keys.num_images, k=view.k, cancel=cancel, progress=progress,
                                 working_bytes=settings.working_bytes)
        if view.pool is None:
            return bound
        # Holding the pool as well, it continues from the true pairs as the pool-aware attack would.
        demixed = pool_aware.pool_aware_attack(
            view.encryption, view.labels, pool=view.pool, start=bound, encodings_per_image=view.encodings_per_image,
            k=view.k, recluster=False, steps=pool_aware.BOUND_PUBLIC_MIX_STEPS, cancel=cancel, progress=progress,
            working_bytes=settings.working_bytes)
        return replace(demixed, stage_seconds={**bound.stage_seconds, **demixed.stage_seconds})
