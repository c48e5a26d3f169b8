"""A reconstruction audit as one function: simulate the deployment, run the attacks, score what leaks.

``audit_deployment`` encodes the private images T times with the configuration under audit (the same encoder
the service's Encode stream uses, fresh keys unless seeded), hands each chosen attack the view its attacker
holds (``attack.AttackerView``), and scores each the way the InstaHide Challenge does. ``audit_encodings``
audits encodings made elsewhere against their originals. ``bench/attack.py`` and the audit service both call
these, so their numbers agree for the same data and seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from instahide_ops.audits.progress import CancelToken
from instahide_ops.audits.reconstruction.attack import (
    KEYS,
    PHOTOS,
    POOL,
    Attack,
    AttackerView,
    AttackResult,
    AttackSettings,
    KeyMapping,
    choose_attacks,
)
from instahide_ops.audits.reconstruction.attack_success import AttackSuccess
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import check_public_parameters
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
from instahide_ops.transforms.instahide.encode import EncodeParams
from instahide_ops.transforms.instahide.pool import PublicPool

AuditProgressCallback = Callable[[str, float, float], None]
"""Called with (stage, fraction of the stage, fraction of the whole audit)."""

DEFAULT_ENCODINGS_PER_IMAGE = 50
MAX_ENCODINGS_PER_IMAGE = 1000
# The audit's own stages' shares of the time, in the attacks' unit (attack.Attack.stages).
ENCODING_WEIGHT, SCORING_WEIGHT = 0.03, 0.02
GRID_PAIRS = 20


@dataclass(frozen=True)
class Deployment:
    """The InstaHide configuration under audit.

    Attributes:
        params: the encoding's parameters, as Encode takes them (cross mode; two private images a mix).
        encodings_per_image: T, encodings made of each private image.
        num_classes: label width; None means max(label) + 1.
        seed: reproducible keys; None draws them from the CSPRNG, as in production.
    """

    params: EncodeParams = field(default_factory=EncodeParams)
    encodings_per_image: int = DEFAULT_ENCODINGS_PER_IMAGE
    num_classes: int | None = None
    seed: int | None = None

    def validate(self) -> None:
        """Raise InvalidInputError for a configuration the encoder or the attacks cannot take; ``field`` names it."""
        self.params.validate()
        check_public_parameters(k=self.params.resolved_k, encodings_per_image=self.encodings_per_image,
                                mode=self.params.mode)
        if self.params.private_per_mix != 2:
            raise InvalidInputError(f"the attacks handle 2 private images a mix, got {self.params.private_per_mix}",
                                    field="private_per_mix")
        if self.encodings_per_image > MAX_ENCODINGS_PER_IMAGE:
            raise InvalidInputError(f"must be in [1, {MAX_ENCODINGS_PER_IMAGE}], got {self.encodings_per_image}",
                                    field="encodings_per_image")


@dataclass(frozen=True)
class AttackReport:
    """How one attack did.

    Attributes:
        attack: the registered attack (its name, title, threat, and whether it is a bound).
        scores: the challenge's four metrics (against each encoding's best-matching originals for
            precomputed encodings, whose pairs are unknown).
        recovery: each private image's best recovery and the fractions above SSIM 0.5 / 0.8.
        recovered: (M, H, W, C) float32 recovered images.
        stage_seconds: seconds per attack stage.
        public_coverage: the attack's ``AttackResult.public_coverage`` (None for attacks that find no public image).
        hit_rate: DisguisedNets' AES codebook: the share of disguised codewords it decrypted (else None).
        permutation_accuracy: DisguisedNets: the share of block positions whose move the attack found (None for
            an attack that looks for none).
        attack_success: the DisguisedNets papers' metric (``attack_success.AttackSuccess``), None where the
            labels cannot train a classifier.
    """

    attack: Attack
    scores: ChallengeScores
    recovery: RecoveryScores
    recovered: torch.Tensor
    stage_seconds: dict[str, float]
    public_coverage: float | None = None
    hit_rate: float | None = None
    permutation_accuracy: float | None = None
    attack_success: AttackSuccess | None = None


@dataclass(frozen=True)
class LeakageReport:
    """An audit's result: every attack that ran (in the order it ran), the device, a picture and the sizes.

    Attributes:
        attacks: attack name -> its report.
        grid_png: originals over their best recoveries by ``grid_attack``, the strongest attack without keys.
        pool_images, pool_fingerprint: the public pool the encodings mixed in; 0 and "" when none is known.
        known_pairs: DisguisedNets: the original/disguised pairs the Level-2 attackers held (not attacked).
        curves: DisguisedNets: mean SSIM against the pairs held and against the noise (``Curve`` points).
        curves_png: those curves drawn (b"" without curves).
    """

    attacks: dict[str, AttackReport]
    device: str
    images: int
    encodings: int
    grid_png: bytes
    grid_attack: str
    seconds: float
    pool_images: int = 0
    pool_fingerprint: str = ""
    known_pairs: int = 0
    curves: tuple[CurvePoint, ...] = ()
    curves_png: bytes = b""

    def strongest_without_keys(self) -> AttackReport:
        """The attack without keys that recovered most (highest Max_SSIM; the earlier one on a tie)."""
        return strongest_without_keys(self.attacks.values())

    def summary(self) -> dict:
        """The headline numbers, JSON-ready."""
        out: dict = {"device": self.device, "images": self.images, "encodings": self.encodings,
                     "seconds": self.seconds, "pool_images": self.pool_images,
                     "pool_fingerprint": self.pool_fingerprint}
        for name, report in self.attacks.items():
            out[name] = {**report.scores.to_dict(), **report.recovery.to_dict(), "stage_seconds": report.stage_seconds}
            for extra in ("public_coverage", "hit_rate", "permutation_accuracy"):
                if getattr(report, extra) is not None:
                    out[name][extra] = getattr(report, extra)
            if report.attack_success is not None:
                out[name]["attack_success"] = report.attack_success.to_dict()
        if self.known_pairs:
            out["pairs_held"] = self.known_pairs
        if self.curves:
            out["curves"] = [point.to_dict() for point in self.curves]
        return out


@dataclass(frozen=True)
class CurvePoint:
    """One point of an audit's curve: an attack's mean SSIM with ``axis`` ("known_pairs", "noise" or
    "salt_pepper") at ``value``."""

    attack: str
    axis: str
    value: float
    mean_ssim: float

    def to_dict(self) -> dict:
        return {"attack": self.attack, "axis": self.axis, "value": self.value, "mean_ssim": self.mean_ssim}


class AuditProgress:
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
        """A callback reporting an attack's stages (``parts``: each with its weight, in order) as consecutive
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


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def audit_deployment(privates: np.ndarray, labels: np.ndarray, deployment: Deployment | None = None, *,
                     pool: PublicPool | None = None, photos: Sequence[np.ndarray] | None = None,
                     attacks: Sequence[str] = (), settings: AttackSettings | None = None,
                     device: torch.device | str = "cpu", progress: AuditProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> LeakageReport:
    """Simulate shipping ``privates`` encoded as ``deployment`` says, T encodings each, and measure what leaks.

    Args:
        privates: (N, H, W, C) uint8 images (or float in [-1, 1]).
        labels: (N,) integer classes.
        deployment: the configuration under audit (None: ``Deployment()``, InstaHide's defaults).
        pool: the public pool the deployment mixes in (cross mode); None builds the bundled challenge pool. The
            attackers that hold the pool hold this one.
        photos: (H, W, C) uint8 photos the pool was cut from, for the attackers that hold them; None: no such
            attacker runs.
        attacks: the attacks to run by name (with what they start from); empty: the defaults that what this
            audit holds allows (``attack.choose_attacks``).
        settings: the attacks' operator settings (None: ``AttackSettings()``).
        device: where to encode and attack.
        progress: (stage, stage fraction, overall fraction) callback.
        cancel: stops the audit (AttackCancelled) at its next progress report.

    Raises:
        InvalidInputError: bad images or labels, a configuration the attacks cannot take, an unknown attack or
            one that holds what this audit does not have.
    """
    start = time.perf_counter()
    deployment = deployment or Deployment()
    settings = settings or AttackSettings()
    deployment.validate()
    labels = np.asarray(labels, dtype=np.int64)
    if len(privates) < 2 or len(labels) != len(privates):
        raise InvalidInputError(f"need at least 2 images with one label each, got {len(privates)} images and "
                                f"{len(labels)} labels", field="images")
    params = deployment.params
    if pool is None:  # the pool build_challenge would build, which the attackers that hold the pool hold
        pool = challenge_public_pool(*np.shape(privates)[1:3], device=device)
    evidence = {KEYS, POOL} | ({PHOTOS} if photos is not None else set())
    chosen = choose_attacks(attacks, evidence=evidence)
    for attack in chosen:
        attack.check(tuple(np.shape(privates)[1:]))
    report = AuditProgress(progress, {"encoding": ENCODING_WEIGHT})  # until the views exist
    report("encoding", 0.0)
    (cancel or CancelToken()).raise_if_cancelled()
    challenge, truth = build_challenge(privates, labels, encodings_per_image=deployment.encodings_per_image,
                                       k=params.resolved_k, params=params, pool=pool,
                                       num_classes=deployment.num_classes or int(labels.max()) + 1,
                                       seed=deployment.seed, device=device)
    device = torch.device(device)
    keys = KeyMapping(pair_indices=torch.from_numpy(truth.pair_indices).to(device),
                      coefficients=torch.from_numpy(truth.coefficients).to(device),
                      public_indices=None if truth.public_indices is None else
                      torch.from_numpy(truth.public_indices).to(device), num_images=len(privates))
    view = AttackerView(torch.from_numpy(challenge.encryption).to(device),
                        torch.from_numpy(challenge.labels).to(device), challenge.k, deployment.encodings_per_image,
                        params.mode, pool=pool.to(device), photos=photos, keys=keys)
    results, report = run_attacks(chosen, view, settings=settings, progress=progress, cancel=cancel,
                                  before={"encoding": ENCODING_WEIGHT}, after={"scoring": SCORING_WEIGHT})
    originals = torch.from_numpy(truth.privates)
    pairs = torch.from_numpy(truth.pair_indices)
    scored = {attack.name: _score(attack, results[attack.name], originals, pairs) for attack in chosen}
    report("scoring", 1.0)
    return _leakage_report(scored, originals=originals, device=device, encodings=len(challenge.encryption),
                           start=start, pool=pool)


def audit_encodings(encryption: np.ndarray, labels: np.ndarray, originals: np.ndarray, *, k: int,
                    encodings_per_image: int, mode: str = "cross", attacks: Sequence[str] = (),
                    settings: AttackSettings | None = None, device: torch.device | str = "cpu",
                    progress: AuditProgressCallback | None = None, cancel: CancelToken | None = None) -> LeakageReport:
    """Attack encodings made elsewhere and match each recovery to its best original.

    The keys and the pool behind each encoding are unknown here, so only attacks that hold neither run, and
    the challenge's per-encoding metrics are taken against the encoding's best-matching original(s): Max_SSIM
    is the decryption's best SSIM over all originals.
    """
    start = time.perf_counter()
    settings = settings or AttackSettings()
    check_public_parameters(k=k, encodings_per_image=encodings_per_image, mode=mode)
    chosen = choose_attacks(attacks, evidence=())
    device = torch.device(device)
    view = AttackerView(torch.as_tensor(np.asarray(encryption), dtype=torch.float32).to(device),
                        torch.as_tensor(np.asarray(labels), dtype=torch.float32).to(device), k, encodings_per_image,
                        mode)
    results, report = run_attacks(chosen, view, settings=settings, progress=progress, cancel=cancel, before={},
                                  after={"scoring": SCORING_WEIGHT})
    originals_t = torch.from_numpy(unit_range_array(originals))
    scored = {}
    for attack in chosen:
        result = results[attack.name]
        best_two = pairwise_ssim(result.decryption, originals_t).topk(min(2, len(originals_t)), dim=1).indices
        pairs = best_two if best_two.shape[1] == 2 else best_two.repeat(1, 2)
        scored[attack.name] = _score(attack, result, originals_t, pairs)
    report("scoring", 1.0)
    return _leakage_report(scored, originals=originals_t, device=device, encodings=len(encryption), start=start,
                           pool=None)


def attacker_views(chosen: Sequence[Attack], view):
    """What each attacker sees (name -> view): what it holds; a bound also holds what every attack without keys
    holds, so it bounds the strongest of them. ``view`` is the family's view holding everything."""
    keyless = frozenset().union(*(attack.holds for attack in chosen if not attack.bound))
    return {attack.name: view.holding(attack.holds | (keyless if attack.bound else frozenset())) for attack in chosen}


def _weights(chosen: Sequence[Attack], views: dict, settings: AttackSettings, *, before: dict[str, float],
             after: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The audit's stages with their weights (``before``, the first attack's own stages, each later attack as one
    stage, ``after``), and each attack's own stages."""
    parts = {attack.name: attack.stages(views[attack.name], settings) for attack in chosen}
    weights = dict(before)
    for i, attack in enumerate(chosen):
        weights |= parts[attack.name] if i == 0 else {attack.name: sum(parts[attack.name].values())}
    return weights | after, parts


def run_attacks(chosen: Sequence[Attack], view, *, settings: AttackSettings, progress: AuditProgressCallback | None,
                cancel: CancelToken | None, before: dict[str, float], after: dict[str, float]
                ) -> tuple[dict, AuditProgress]:
    """Run each attack on its view (``attacker_views``), in order, each starting from its ``starts_from``'s
    result. The audit's own stages ``before`` the attacks are done; those ``after`` follow. Returns the results
    and the audit's progress reporter, at the start of the first stage ``after``."""
    views = attacker_views(chosen, view)
    weights, parts = _weights(chosen, views, settings, before=before, after=after)
    report = AuditProgress(progress, weights)
    for stage in before:
        report(stage, 1.0)
    results: dict = {}
    for i, attack in enumerate(chosen):
        callback = report if i == 0 else report.renamed(attack.name, parts[attack.name])
        start = results[attack.starts_from] if attack.starts_from is not None else None
        results[attack.name] = attack.run(views[attack.name], start=start, settings=settings, progress=callback,
                                          cancel=cancel)
    report(next(iter(after)), 0.0)
    return results, report


def _score(attack: Attack, result: AttackResult, originals: torch.Tensor, pairs: torch.Tensor) -> AttackReport:
    return AttackReport(attack, challenge_scores(result.decryption, originals, pairs),
                        recovered_fractions(result.recovered, originals), result.recovered, result.stage_seconds,
                        result.public_coverage)


def strongest_without_keys(reports: Sequence[AttackReport] | object) -> AttackReport:
    """Of attack reports, the one without keys with the highest Max_SSIM (the earlier on a tie; NaN never wins)."""
    keyless = [report for report in reports if not report.attack.bound]  # type: ignore[union-attr]
    if not keyless:
        raise InvalidInputError("no attack without keys ran", field="attacks")
    return max(keyless, key=lambda r: r.scores.max_ssim if np.isfinite(r.scores.max_ssim) else -np.inf)


def _leakage_report(scored: dict[str, AttackReport], *, originals: torch.Tensor, device: torch.device, encodings: int,
                    start: float, pool: PublicPool | None) -> LeakageReport:
    shown = min(GRID_PAIRS, len(originals))
    strongest = strongest_without_keys(scored.values())  # the picture shows the worst case without keys
    grid = image_grid(originals[:shown], strongest.recovered[strongest.recovery.best_match[:shown]],
                      title=f"{strongest.attack.title}: Max_SSIM {strongest.scores.max_ssim:.3f}",
                      captions=[f"{v:.2f}" for v in strongest.recovery.best_ssim[:shown].tolist()])
    return LeakageReport(scored, device_name(device), len(originals), encodings, encode_png(grid),
                         strongest.attack.name, time.perf_counter() - start,
                         pool_images=0 if pool is None else len(pool),
                         pool_fingerprint="" if pool is None else pool.fingerprint)
