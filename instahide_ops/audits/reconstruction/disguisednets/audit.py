"""A DisguisedNets reconstruction audit as one function: disguise the owner's images as a deployment would, run
the attacks, score what leaks.

``audit_disguise`` draws a fresh key of the configuration under audit (from the CSPRNG unless seeded), disguises
every private image under it with fresh noise, keeps m of them as the known pairs a Level-2 attacker holds (they are
not scored), and hands each chosen attack the view its threat level gives it (``view.DisguisedView``). Each
recovery belongs to one disguised image, so scores are each image's SSIM against its own recovery (the
challenge's numbers with both "private images" of an encoding the same one: Max_SSIM is the mean SSIM), the
papers' attack success, the permutation found, the codebook's hit rate; then the curves: mean SSIM of the
attacks that hold pairs (and the bound) against the pairs held and against the noise. ``bench/disguise_attack.py``
and the audit service both call it, so their numbers agree for the same data and seed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from instahide_ops.audits.progress import CancelToken
from instahide_ops.audits.reconstruction.attack import KEYS, PAIRS, PHOTOS, AttackSettings, choose_attacks
from instahide_ops.audits.reconstruction.attack_success import attack_success
from instahide_ops.audits.reconstruction.audit import (
    GRID_PAIRS,
    SCORING_WEIGHT,
    AttackReport,
    AuditProgressCallback,
    CurvePoint,
    LeakageReport,
    attacker_views,
    device_name,
    run_attacks,
    strongest_without_keys,
)
from instahide_ops.audits.reconstruction.disguisednets.view import DisguiseAttackResult, DisguisedView, KnownPairs
from instahide_ops.audits.reconstruction.scores import aligned_recovery, challenge_scores
from instahide_ops.errors import InvalidInputError
from instahide_ops.grid import encode_png, image_grid
from instahide_ops.images import unit_range_array
from instahide_ops.plot import line_plot
from instahide_ops.randomness import RandomSource
from instahide_ops.transforms.disguisednets import DisguisedNetsParams, check_params, create_key, disguise, draw_noise

FAMILY = "disguised_nets"
DEFAULT_KNOWN_PAIRS = 4
MAX_KNOWN_PAIRS = 256
NOISE_CURVE = (0.0, 10.0, 25.0, 50.0, 100.0)  # RMT noise bounds N (0–255 scale), with the audited one added
SALT_PEPPER_CURVE = (0.0, 0.01, 0.03, 0.05)  # AES salt-and-pepper rates, with the audited one added
DISGUISE_WEIGHT, CURVES_WEIGHT = 0.01, 0.04


@dataclass(frozen=True)
class DisguiseDeployment:
    """The DisguisedNets configuration under audit.

    Attributes:
        params: the key's parameters, as KeyService creates them.
        known_pairs: m, the owner's images a Level-2 attacker holds with their disguises (0: no Level-2 attack).
        seed: reproducible key, noise and pair choice; None draws them from the CSPRNG, as in production.
        curves: also measure the curves (SSIM against pairs held and against the noise).
    """

    params: DisguisedNetsParams = dataclasses.field(default_factory=DisguisedNetsParams)
    known_pairs: int = DEFAULT_KNOWN_PAIRS
    seed: int | None = None
    curves: bool = True

    def validate(self, image_shape: Sequence[int], images: int | None = None) -> None:
        """InvalidInputError naming the field for a configuration that cannot disguise or be attacked."""
        check_params(self.params, image_shape)
        if not 0 <= self.known_pairs <= MAX_KNOWN_PAIRS:
            raise InvalidInputError(f"must be in [0, {MAX_KNOWN_PAIRS}], got {self.known_pairs}", field="known_pairs")
        if images is not None and images - self.known_pairs < 2:
            raise InvalidInputError(f"{images} images leave {images - self.known_pairs} to attack beside "
                                    f"{self.known_pairs} known pairs; need at least 2", field="known_pairs")

    def evidence(self, photos: bool) -> frozenset[str]:
        """What this audit can hand its attackers."""
        return frozenset({KEYS} | ({PAIRS} if self.known_pairs else set()) | ({PHOTOS} if photos else set()))


def choose(deployment: DisguiseDeployment, attacks: Sequence[str] = (), *, extra: Sequence[str] = (),
           skipped: Sequence[str] = (), photos: bool = True,
           image_shape: tuple[int, int, int] | None = None) -> list:
    """The attacks an audit of ``deployment`` runs: ``attack.choose_attacks`` over DisguisedNets' attacks, less
    the defaults that cannot attack its parameters; one asked for by name that cannot is refused. With
    ``image_shape``, each is also checked against the images (``check_images``)."""
    chosen = choose_attacks(attacks, extra=extra, skipped=skipped, evidence=deployment.evidence(photos),
                            family=FAMILY)
    named = set(attacks) | set(extra)
    kept = []
    for attack in chosen:
        reason = attack.unsupported(deployment.params)
        if reason and attack.name in named:
            raise InvalidInputError(f"{attack.name} cannot attack this configuration: {reason}", field="attacks")
        if not reason:
            kept.append(attack)
    for attack in kept if image_shape is not None else ():
        attack.check_images(deployment.params, image_shape)
    if not any(not attack.bound for attack in kept):
        raise InvalidInputError("no attack without the key can attack this configuration with what this audit "
                                "holds (known pairs, photos)", field="attacks")
    return kept


def _pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 images as they are; float in [-1, 1] to 0–255 uint8 (what a deployment's client would send)."""
    if images.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(images))
    return torch.from_numpy(np.round((np.asarray(images, dtype=np.float32) + 1) * 127.5).clip(0, 255)
                            .astype(np.uint8))


def audit_disguise(privates: np.ndarray, labels: np.ndarray | None, deployment: DisguiseDeployment | None = None, *,
                   photos: Sequence[np.ndarray] | None = None, attacks: Sequence[str] = (),
                   extra: Sequence[str] = (), skipped: Sequence[str] = (), settings: AttackSettings | None = None,
                   device: torch.device | str = "cpu", progress: AuditProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> LeakageReport:
    """Simulate disguising ``privates`` as ``deployment`` says and measure what leaks.

    Args:
        privates: (N, H, W, C) uint8 images (or float in [-1, 1]).
        labels: (N,) classes for the papers' attack success (None: not computed).
        deployment: the configuration under audit (None: ``DisguiseDeployment()``).
        photos: public (H, W, 3) uint8 photos for the attackers that hold them (None: none such runs).
        attacks, extra, skipped: as ``attack.choose_attacks`` (DisguisedNets' attacks).
        settings: the attacks' operator settings.
        device: where to disguise and attack.

    Raises:
        InvalidInputError: parameters that do not fit the images, too few images, an attack that cannot run.
    """
    start = time.perf_counter()
    deployment = deployment or DisguiseDeployment()
    settings = settings or AttackSettings()
    privates = np.asarray(privates)
    if privates.ndim != 4:
        raise InvalidInputError(f"expected (N, H, W, C) images, got {list(privates.shape)}", field="images.shape")
    deployment.validate(privates.shape[1:], len(privates))
    chosen = choose(deployment, attacks, extra=extra, skipped=skipped, photos=photos is not None,
                    image_shape=privates.shape[1:])
    params, m, seed = deployment.params, deployment.known_pairs, deployment.seed
    device = torch.device(device)

    # The deployment: one key, every image disguised once with fresh noise; m of them go to the attacker as pairs.
    key = create_key(params, privates.shape[1:], seed=seed)
    pixels = _pixels(privates)
    disguised = _disguise(pixels, key, seed, device)
    order = RandomSource(None if seed is None else (seed, 1)).permutation(len(pixels))
    known, attacked = np.sort(order[:m]), np.sort(order[m:])
    pairs = KnownPairs(pixels[known], disguised[known].cpu()) if m else None
    view = DisguisedView(disguised[attacked].to(device), params, pairs, photos, key)
    curves_weight = CURVES_WEIGHT if deployment.curves else 0.0
    results, report = run_attacks(chosen, view, settings=settings, progress=progress, cancel=cancel,
                                  before={"disguising": DISGUISE_WEIGHT},
                                  after={"curves": curves_weight, "scoring": SCORING_WEIGHT})

    originals = torch.from_numpy(unit_range_array(privates[attacked]))
    curves: list[CurvePoint] = []
    if deployment.curves:
        curves = _curves(chosen, view, deployment, pixels[attacked], originals, results, settings, device,
                         lambda fraction: report("curves", fraction), cancel)
    report("scoring", 0.0)
    own = torch.arange(len(originals))
    labels_attacked = None if labels is None else np.asarray(labels).reshape(-1)[attacked]
    scored = {}
    for attack in chosen:
        result = _best_reading(results[attack.name], originals)
        permutation_accuracy = None if result.permutation is None else \
            float(np.mean(np.asarray(result.permutation) == key.permutation))
        success = None if labels_attacked is None else attack_success(originals.numpy(), result.recovered.numpy(),
                                                                      labels_attacked)
        scored[attack.name] = AttackReport(attack, challenge_scores(result.recovered, originals,
                                                                    torch.stack([own, own], 1)),
                                           aligned_recovery(result.recovered, originals), result.recovered,
                                           result.stage_seconds, hit_rate=result.hit_rate,
                                           permutation_accuracy=permutation_accuracy, attack_success=success)
    report("scoring", 1.0)
    strongest = strongest_without_keys(scored.values())
    shown = min(GRID_PAIRS, len(originals))
    grid = image_grid(originals[:shown], strongest.recovered[:shown],
                      title=f"{strongest.attack.title}: mean SSIM {strongest.scores.mean_ssim:.3f}",
                      captions=[f"{v:.2f}" for v in strongest.recovery.best_ssim[:shown].tolist()])
    return LeakageReport(scored, device_name(device), len(pixels), len(attacked), encode_png(grid),
                         strongest.attack.name, time.perf_counter() - start, known_pairs=m, curves=tuple(curves),
                         curves_png=_draw_curves(curves, chosen) if curves else b"")


def _best_reading(result: DisguiseAttackResult, originals: torch.Tensor) -> DisguiseAttackResult:
    """Of a result's readings of the whole set (itself and its ``alternatives``), the one that scores best."""
    if not result.alternatives:
        return result
    readings = [(result.recovered, result.permutation), *result.alternatives]
    scores = [float(aligned_recovery(recovered, originals).best_ssim.mean()) for recovered, _ in readings]
    recovered, permutation = readings[int(np.argmax(scores))]
    return dataclasses.replace(result, recovered=recovered, permutation=permutation, alternatives=())


def _disguise(pixels: torch.Tensor, key, seed: int | None, device: torch.device) -> torch.Tensor:
    noise = draw_noise(key, len(pixels), seed=None if seed is None else (seed, 2), device=device)
    return disguise(pixels.to(device), key, noise=noise)


def _curves(chosen: Sequence, view: DisguisedView, deployment: DisguiseDeployment, pixels: torch.Tensor,
            originals: torch.Tensor, results: dict, settings: AttackSettings, device: torch.device, report,
            cancel: CancelToken | None) -> list[CurvePoint]:
    """Mean SSIM of the attacks holding pairs (and the bound) at fewer pairs, and under other noise."""
    views = attacker_views(chosen, view)
    curved = [attack for attack in chosen if PAIRS in views[attack.name].evidence]
    pairs_held = sorted({2 ** i for i in range(9) if 2 ** i < deployment.known_pairs} | {deployment.known_pairs})
    params = deployment.params
    axis, levels = ("noise", NOISE_CURVE) if params.method == "rmt" else ("salt_pepper", SALT_PEPPER_CURVE)
    audited = params.noise if params.method == "rmt" else params.salt_pepper
    levels = sorted(set(levels) | {audited})
    steps = max(1, len(curved) * (len(pairs_held) + len(levels)))
    done, points = 0, []

    def mean_ssim(attack, attack_view) -> float:
        nonlocal done
        result = attack.run(attack_view, start=None, settings=settings, cancel=cancel)
        done += 1
        report(done / steps)
        return float(aligned_recovery(result.recovered, originals).best_ssim.mean())

    for attack in curved:
        for count in pairs_held:
            score = _score_of(results[attack.name], originals) if count == deployment.known_pairs else \
                mean_ssim(attack, views[attack.name].with_pairs(count))
            points.append(CurvePoint(attack.name, "known_pairs", float(count), score))
    if not curved:
        return points
    for level in levels:
        noisy = dataclasses.replace(params, **{axis: level})
        if level == audited:
            scores = {attack.name: _score_of(results[attack.name], originals) for attack in curved}
        else:
            key = create_key(noisy, pixels.shape[1:], seed=deployment.seed)
            disguised = _disguise(pixels, key, deployment.seed, device)
            pairs = view.pairs and KnownPairs(view.pairs.originals,
                                              _disguise(view.pairs.originals, key, deployment.seed, device).cpu())
            level_view = DisguisedView(disguised, noisy, pairs, view.photos, key)
            level_views = attacker_views(chosen, level_view)
            scores = {attack.name: mean_ssim(attack, level_views[attack.name]) for attack in curved}
        points.extend(CurvePoint(name, axis, float(level), score) for name, score in scores.items())
    return points


def _score_of(result: DisguiseAttackResult, originals: torch.Tensor) -> float:
    return float(aligned_recovery(result.recovered, originals).best_ssim.mean())


def _draw_curves(points: Sequence[CurvePoint], chosen: Sequence) -> bytes:
    titles = {attack.name: attack.title for attack in chosen}
    panels = []
    labels = {"known_pairs": "known pairs held", "noise": "noise bound N (0-255)",
              "salt_pepper": "salt-and-pepper rate"}
    for axis in dict.fromkeys(point.axis for point in points):
        series: dict[str, list[tuple[float, float]]] = {}
        for point in points:
            if point.axis == axis:
                series.setdefault(titles[point.attack], []).append((point.value, point.mean_ssim))
        panels.append(line_plot(series, title=f"mean SSIM against {labels[axis]}", x_label=labels[axis],
                                y_label="SSIM", log2_x=axis == "known_pairs"))
    return encode_png(np.concatenate(panels))
