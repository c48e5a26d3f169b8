"""A leakage audit as one function: simulate the deployment, attack it, score what leaks.

``audit_deployment`` encodes the private images T times with the configuration under audit (the
same encoder the service's Encode stream uses, fresh keys unless seeded), runs the ciphertext-only
attack and, optionally, the photo-aware attack (the same attacker holding the photos the pool was cut
from), the pool-aware attack (holding the public pool itself) and the key-aware bound, and scores each
the way the InstaHide Challenge does.
``audit_encodings`` audits encodings made elsewhere against their originals. ``bench/attack.py`` and
the audit service both call these, so their numbers agree for the same data and seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from instahide_ops.audits.progress import CancelToken
from instahide_ops.audits.reconstruction import create_attack
from instahide_ops.audits.reconstruction.attack import AttackResult
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import attack_stages
from instahide_ops.audits.reconstruction.instahide.photo_aware import STAGES as PHOTO_POOL_STAGES
from instahide_ops.audits.reconstruction.instahide.pool_aware import BOUND_PUBLIC_MIX_STEPS, DEFAULT_PUBLIC_MIX_STEPS
from instahide_ops.audits.reconstruction.instahide.pool_aware import STAGES as POOL_AWARE_STAGES
from instahide_ops.audits.reconstruction.instahide.pursuit import WORKING_BYTES
from instahide_ops.audits.reconstruction.instahide.self_refine import RefinementConfig
from instahide_ops.audits.reconstruction.scores import (
    ChallengeScores,
    RecoveryScores,
    challenge_scores,
    pairwise_ssim,
    recovered_fractions,
)
from instahide_ops.errors import InvalidInputError
from instahide_ops.grid import encode_png, image_grid
from instahide_ops.images import unit_range_array
from instahide_ops.transforms.instahide.challenge import build_challenge, challenge_public_pool
from instahide_ops.transforms.instahide.pool import PublicPool

AuditProgressCallback = Callable[[str, float, float], None]
"""Called with (stage, fraction of the stage, fraction of the whole audit)."""

# Rough seconds of each attack stage on two CPU cores at 100 × 50, over 250, for the overall fraction (measured
# through the service on 2026-11-24; training, which runs on CUDA only, keeps its older rough share). An attack
# run inside the audit as one stage (photo_aware, pool_aware, key_aware) weighs what its own stages weigh.
STAGE_WEIGHTS = {"encoding": 0.03, "training": 0.30, "similarity": 0.01, "clustering": 0.03, "assignment": 0.01,
                 "recovery": 0.45, "orientation": 0.01, "scoring": 0.02, "photo_pool": 1.60, "public_mix": 0.35,
                 "reclustering": 0.04, "refinement": 0.36, "reassignment": 1.20, "restarts": 0.35,
                 "shared_publics": 0.18, "self_refinement": 1.25}
GRID_PAIRS = 20


@dataclass(frozen=True)
class AttackReport:
    """How one attack did.

    Attributes:
        scores: the challenge's four metrics (None for precomputed encodings, whose pairs are unknown).
        recovery: each private image's best recovery and the fractions above SSIM 0.5 / 0.8.
        recovered: (M, H, W, C) float32 recovered images.
        stage_seconds: seconds per attack stage.
        public_coverage: the attack's ``AttackResult.public_coverage`` (None for attacks that find no
            public image).
    """

    scores: ChallengeScores | None
    recovery: RecoveryScores
    recovered: torch.Tensor
    stage_seconds: dict[str, float]
    public_coverage: float | None = None


@dataclass(frozen=True)
class LeakageReport:
    """An audit's result: the attacks that ran, the device, a picture and the sizes."""

    ciphertext_only: AttackReport
    key_aware: AttackReport | None
    pool_aware: AttackReport | None
    device: str
    images: int
    encodings: int
    grid_png: bytes
    seconds: float
    photo_aware: AttackReport | None = None
    pool_images: int = 0  # the public pool the encodings mixed in; 0 and "" when none is known
    pool_fingerprint: str = ""

    def summary(self) -> dict:
        """The headline numbers, JSON-ready."""
        out: dict = {"device": self.device, "images": self.images, "encodings": self.encodings,
                     "seconds": self.seconds, "pool_images": self.pool_images,
                     "pool_fingerprint": self.pool_fingerprint}
        for name, report in self.attacks().items():
            out[name] = {**(report.scores.to_dict() if report.scores else {}),
                         **report.recovery.to_dict(), "stage_seconds": report.stage_seconds}
            if report.public_coverage is not None:
                out[name]["public_coverage"] = report.public_coverage
        return out

    def attacks(self) -> dict[str, AttackReport]:
        """The attacks that ran, by name: "ciphertext_only", then "photo_aware", "pool_aware" and "key_aware"
        when run."""
        reports = {"ciphertext_only": self.ciphertext_only, "photo_aware": self.photo_aware,
                   "pool_aware": self.pool_aware, "key_aware": self.key_aware}
        return {name: report for name, report in reports.items() if report is not None}


class _Progress:
    """Turns stage reports into (stage, stage fraction, overall fraction) callbacks."""

    def __init__(self, callback: AuditProgressCallback | None, weights: dict[str, float]) -> None:
        """``weights``: each stage the audit reports, in order, with its share of the time (any unit)."""
        self._callback = callback
        self._weights = weights
        self._before = _summed_before(weights)
        self._total = sum(weights.values())

    def __call__(self, stage: str, fraction: float) -> None:
        if self._callback is not None and stage in self._before:
            overall = (self._before[stage] + self._weights[stage] * fraction) / self._total
            self._callback(stage, fraction, min(1.0, overall))

    def renamed(self, name: str, parts: dict[str, float]) -> Callable[[str, float], None]:
        """A callback reporting a sub-attack's stages (``parts``: each with its weight, in order) as consecutive
        parts of the one stage ``name``."""
        before, total = _summed_before(parts), sum(parts.values())
        return lambda stage, fraction: self(name, (before[stage] + parts[stage] * fraction) / total)


def _summed_before(weights: dict[str, float]) -> dict[str, float]:
    # One division of the weights summed so far, in order: a stage's end then equals the next one's start,
    # and the last one's end the total, exactly.
    before, done = {}, 0.0
    for stage, weight in weights.items():
        before[stage] = done
        done += weight
    return before


def _weights(stages: Sequence[str], *, slower: Sequence[str] = (), by: float = 1.0) -> dict[str, float]:
    """``STAGE_WEIGHTS`` of ``stages``, those in ``slower`` multiplied by ``by``."""
    return {stage: STAGE_WEIGHTS[stage] * (by if stage in slower else 1.0) for stage in stages}


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def audit_deployment(privates: np.ndarray, labels: np.ndarray, *, k: int = 6, encodings_per_image: int = 50,
                     mode: str = "cross", num_classes: int | None = None, pool: PublicPool | None = None,
                     seed: int | None = None, device: torch.device | str = "cpu", key_aware: bool = True,
                     pool_aware: bool = True, progress: AuditProgressCallback | None = None,
                     cancel: CancelToken | None = None, similarity: str = "auto",
                     photos: Sequence[np.ndarray] | None = None,
                     pool_memory_bytes: int = WORKING_BYTES,
                     refinement: RefinementConfig | None = None) -> LeakageReport:
    """Simulate shipping ``privates`` encoded with (mode, k), T encodings each, and measure what leaks.

    Args:
        privates: (N, H, W, C) uint8 images (or float in [-1, 1]).
        labels: (N,) integer classes.
        k, encodings_per_image, mode: the configuration under audit.
        num_classes: label width; None means max(label) + 1.
        pool: the public pool the deployment mixes in (cross mode); None builds the bundled challenge pool.
        seed: reproducible keys; None draws them from the CSPRNG, as in production.
        device: where to encode and attack.
        key_aware: also run the key-aware bound (continued by the pool-aware attack when that runs, so it
            bounds the strongest attacker the audit plays).
        pool_aware: also run the pool-aware attack (cross mode: the ciphertext-only attacker holding ``pool``).
        progress: (stage, stage fraction, overall fraction) callback.
        cancel: stops the audit (AttackCancelled) at its next progress report.
        similarity: the attack's similarity stage ("auto": learned on CUDA, else the high-pass statistic).
        photos: also run the photo-aware attack (cross mode): the ciphertext-only attacker holding these
            (H, W, C) uint8 photos, which the pool was cut from, but not the pool.
        pool_memory_bytes: memory each pool-aware (and photo-aware) attack's pursuits over a pool may hold: the
            pool's Gram matrix is stored only when it fits, and batches shrink to fit (``pursuit.PoolGram``). The
            key-aware bound solves as many reused publics as its normal matrix fits in it
            (``joint_recovery.unknowns_that_fit``).
        refinement: how the ciphertext-only attack trains a refiner of its recoveries on sets of its own
            (``attacks.self_refine``); None skips it. The attacks that continue from its result start from the
            refined recoveries.
    """
    start = time.perf_counter()
    cancel = cancel or CancelToken()
    labels = np.asarray(labels, dtype=np.int64)
    if len(privates) < 2 or len(labels) != len(privates):
        raise InvalidInputError(f"need at least 2 images with one label each, got {len(privates)} images and "
                                f"{len(labels)} labels", field="images")
    pool_aware = pool_aware and mode == "cross"
    photo_aware = photos is not None and mode == "cross"
    shared_publics = ("shared_publics",) if mode == "cross" and k > 2 else ()  # the bound holds the key's mapping
    parts = {"photo_aware": _weights((*PHOTO_POOL_STAGES, *POOL_AWARE_STAGES)) if photo_aware else {},
             "pool_aware": _weights(POOL_AWARE_STAGES) if pool_aware else {},
             # The bound holding the pool runs the public-mix EM (and its restarts) for more steps.
             "key_aware": _weights(("recovery", "orientation", *shared_publics,
                                    *(("public_mix", "restarts") if pool_aware else ())),
                                   slower=("public_mix", "restarts"),
                                   by=BOUND_PUBLIC_MIX_STEPS / DEFAULT_PUBLIC_MIX_STEPS) if key_aware else {}}
    stages = attack_stages(similarity, device, refine=refinement is not None)
    report = _Progress(progress, {**_weights(["encoding", *stages]),
                                  **{name: sum(weights.values()) for name, weights in parts.items() if weights},
                                  **_weights(["scoring"])})
    report("encoding", 0.0)
    cancel.raise_if_cancelled()
    if mode == "cross" and pool is None:  # the pool build_challenge would build, which the attacker holds
        pool = challenge_public_pool(*np.shape(privates)[1:3], device=device)
    challenge, truth = build_challenge(privates, labels, encodings_per_image=encodings_per_image, k=k, mode=mode,
                                       pool=pool, num_classes=num_classes or int(labels.max()) + 1, seed=seed,
                                       device=device)
    report("encoding", 1.0)
    attack = create_attack("ciphertext_only")(challenge.encryption, challenge.labels, k=k,
                                              encodings_per_image=encodings_per_image, mode=mode, device=device,
                                              progress=report, cancel=cancel, similarity=similarity,
                                              refinement=refinement)
    from_photos = None
    if photo_aware:
        from_photos = create_attack("photo_aware")(
            challenge.encryption, challenge.labels, photos=photos, start=attack,
            encodings_per_image=encodings_per_image, k=k, device=device, cancel=cancel,
            progress=report.renamed("photo_aware", parts["photo_aware"]), working_bytes=pool_memory_bytes)
    demixed = None
    if pool_aware:
        demixed = create_attack("pool_aware")(
            challenge.encryption, challenge.labels, pool=pool, start=attack, encodings_per_image=encodings_per_image,
            k=k, device=device, cancel=cancel, progress=report.renamed("pool_aware", parts["pool_aware"]),
            working_bytes=pool_memory_bytes)
    bound = None
    if key_aware:
        progress = report.renamed("key_aware", parts["key_aware"])
        bound = create_attack("key_aware")(challenge.encryption, challenge.labels, pair_indices=truth.pair_indices,
                                           coefficients=truth.coefficients, public_indices=truth.public_indices,
                                           num_images=len(privates), k=k, device=device, cancel=cancel,
                                           progress=progress, working_bytes=pool_memory_bytes)
        if pool_aware:  # a bound on the strongest attacker the audit plays: it holds the pool as well
            demixed_bound = create_attack("pool_aware")(
                challenge.encryption, challenge.labels, pool=pool, start=bound, encodings_per_image=encodings_per_image,
                k=k, recluster=False, steps=BOUND_PUBLIC_MIX_STEPS, device=device, cancel=cancel, progress=progress,
                working_bytes=pool_memory_bytes)
            bound = replace(demixed_bound, stage_seconds={**bound.stage_seconds, **demixed_bound.stage_seconds})
    report("scoring", 0.0)
    originals = torch.from_numpy(truth.privates)
    pairs = torch.from_numpy(truth.pair_indices)
    scored = [_score(result, originals, pairs) if result is not None else None
              for result in (attack, bound, demixed, from_photos)]
    report("scoring", 1.0)
    return _leakage_report(*scored, originals=originals, device=device, encodings=len(challenge.encryption),
                           start=start, pool=pool if mode == "cross" else None)


def audit_encodings(encryption: np.ndarray, labels: np.ndarray, originals: np.ndarray, *, k: int,
                    encodings_per_image: int, mode: str = "cross", device: torch.device | str = "cpu",
                    progress: AuditProgressCallback | None = None, cancel: CancelToken | None = None,
                    similarity: str = "auto", refinement: RefinementConfig | None = None) -> LeakageReport:
    """Attack encodings made elsewhere and match each recovery to its best original.

    The pairs behind each encoding are unknown here, so the challenge's per-encoding metrics are
    taken against the encoding's best-matching original(s) instead: Max_SSIM is the decryption's
    best SSIM over all originals. No key-aware bound (no keys).
    """
    start = time.perf_counter()
    report = _Progress(progress, _weights([*attack_stages(similarity, device, refine=refinement is not None),
                                           "scoring"]))
    attack = create_attack("ciphertext_only")(encryption, labels, k=k, encodings_per_image=encodings_per_image,
                                              mode=mode, device=device, progress=report, cancel=cancel,
                                              similarity=similarity, refinement=refinement)
    report("scoring", 0.0)
    originals_t = torch.from_numpy(unit_range_array(originals))
    best_two = pairwise_ssim(attack.decryption, originals_t).topk(min(2, len(originals_t)), dim=1).indices
    pairs = best_two if best_two.shape[1] == 2 else best_two.repeat(1, 2)
    scored = _score(attack, originals_t, pairs)
    report("scoring", 1.0)
    return _leakage_report(scored, None, None, None, originals=originals_t, device=device, encodings=len(encryption),
                           start=start, pool=None)


def _score(result: AttackResult, originals: torch.Tensor, pairs: torch.Tensor) -> AttackReport:
    return AttackReport(challenge_scores(result.decryption, originals, pairs),
                        recovered_fractions(result.recovered, originals), result.recovered, result.stage_seconds,
                        result.public_coverage)


def _leakage_report(attack: AttackReport, bound: AttackReport | None, demixed: AttackReport | None,
                    from_photos: AttackReport | None, *, originals: torch.Tensor, device: torch.device | str,
                    encodings: int, start: float, pool: PublicPool | None) -> LeakageReport:
    shown = min(GRID_PAIRS, len(originals))
    strongest = demixed or from_photos or attack  # the picture shows the worst case without keys
    grid = image_grid(originals[:shown], strongest.recovered[strongest.recovery.best_match[:shown]])
    return LeakageReport(attack, bound, demixed, device_name(device), len(originals), encodings, encode_png(grid),
                         time.perf_counter() - start, from_photos, pool_images=0 if pool is None else len(pool),
                         pool_fingerprint="" if pool is None else pool.fingerprint)

