"""The ciphertext-only attack (after Carlini et al. 2020): what every audit runs first.

Input: the challenge-format arrays (encodings and mixed labels) and the public parameters; never
keys, masks, partners or public images. Stages: training a similarity network on synthetic encodings
of the attacker's own images (on CUDA by default; skipped for the high-pass statistic) → similarity
of |e| → clusters (one per private image) → two clusters per encoding with λ from the labels →
recovery by EM → orientation.
"""

from __future__ import annotations

import numpy as np
import torch

from instahide_ops.audits.progress import CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import (
    AttackerView,
    AttackResult,
    AttackSettings,
    register_attack,
)
from instahide_ops.audits.reconstruction.instahide.clustering import cluster_by_class, coefficients_from_labels
from instahide_ops.audits.reconstruction.instahide.orientation import resolve_orientation
from instahide_ops.audits.reconstruction.instahide.recovery import NATURAL_CHANNEL_MEAN, recover_privates
from instahide_ops.audits.reconstruction.instahide.self_refine import RefinementConfig, refine_recoveries
from instahide_ops.audits.reconstruction.instahide.similarity import class_sets, highpass_features, similarity_matrix
from instahide_ops.audits.reconstruction.instahide.similarity_net import (
    TrainingConfig,
    cached_similarity_net,
    learned_features,
)
from instahide_ops.errors import InvalidInputError

STAGES = ("training", "similarity", "clustering", "assignment", "recovery", "orientation", "self_refinement")
# Rough seconds of each stage on two CPU cores at 100 × 50, over 250 (measured through the service on 2026-11-24;
# training, which runs on CUDA only, keeps an older rough share): the audit's progress bar moves by them.
STAGE_WEIGHTS = {"training": 0.30, "similarity": 0.01, "clustering": 0.03, "assignment": 0.01, "recovery": 0.45,
                 "orientation": 0.01, "self_refinement": 1.25}
SIMILARITIES = ("auto", "learned", "highpass")
MIN_K = 3  # a cross-dataset mix the attack handles holds at least one public image beside its two private ones


def attack_device(array: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.device:
    """Where an attack runs: ``device`` when given, else the input's (the CPU for a numpy array)."""
    if device is not None:
        return torch.device(device)
    return array.device if torch.is_tensor(array) else torch.device("cpu")


def check_public_parameters(*, k: int, encodings_per_image: int, mode: str) -> None:
    """The public parameters the attacks handle: cross-dataset mixes with at least one public image.

    Raises:
        InvalidInputError: the mode, k or T is outside them.
    """
    if mode != "cross":
        raise InvalidInputError(f"only cross mode is attacked so far, got {mode!r}", field="mode")
    if k < MIN_K:
        raise InvalidInputError(f"cross mode with public images needs k >= {MIN_K}, got {k}", field="k")
    if encodings_per_image < 1:
        raise InvalidInputError(f"must be at least 1, got {encodings_per_image}", field="encodings_per_image")


def as_tensor(array: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy array (or anything ``np.asarray`` takes) or a tensor on any device, as a tensor on ``device``
    (and of ``dtype``, converted in the same copy)."""
    return (array if torch.is_tensor(array) else torch.as_tensor(np.asarray(array))).to(device, dtype)


def check_challenge_arrays(encryption: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The arrays as float32 tensors on ``device``; InvalidInputError for shapes that do not fit."""
    encryption, labels = as_tensor(encryption, device, torch.float32), as_tensor(labels, device, torch.float32)
    if encryption.ndim != 4:
        raise InvalidInputError(f"expected (E, H, W, C), got {list(encryption.shape)}", field="encryption")
    if labels.ndim != 2 or len(labels) != len(encryption):
        raise InvalidInputError(f"expected ({len(encryption)}, classes), got {list(labels.shape)}", field="labels")
    return encryption, labels


def recovery_options(encryption: torch.Tensor, k: int, steps: int | None,
                     public_mean: torch.Tensor | float | None) -> dict:
    """Keyword arguments of ``recover_privates`` shared by the attacks."""
    if public_mean is None:
        channels = encryption.shape[-1]
        public_mean = torch.tensor(NATURAL_CHANNEL_MEAN) if channels == 3 else sum(NATURAL_CHANNEL_MEAN) / 3
    if torch.is_tensor(public_mean):
        public_mean = public_mean.to(encryption.device, torch.float32)
    options = {"public_mean": public_mean, "public_slots": k - 2}
    if steps is not None:
        options["steps"] = steps
    return options


def uses_learned_similarity(similarity: str, device: torch.device | str) -> bool:
    """Whether the attack trains its similarity network: "learned", or "auto" on CUDA."""
    return similarity == "learned" or (similarity == "auto" and torch.device(device).type == "cuda")


def attack_stages(similarity: str, device: torch.device | str, refine: bool = False) -> list[str]:
    """The stages the attack runs, in order: ``STAGES`` without training for the high-pass statistic, and
    without the self-refinement unless asked for."""
    skipped = {"training"} if not uses_learned_similarity(similarity, device) else set()
    if not refine:
        skipped.add("self_refinement")
    return [s for s in STAGES if s not in skipped]


SIZE_DISCOUNT_POWER = 4
"""How hard a cluster's size, far from an image's expected appearances, discounts its recovery in the pick
(100 × 50 ciphertext-only, Max_SSIM: λ alone 0.685; power 1 0.699, 2 0.705, 4 0.711, 8 0.709; seed 1: 0.697
→ 0.723 at 4; 30 × 20: 0.590 → 0.604)."""


def pick_decryption(recovered: torch.Tensor, members: torch.Tensor, weights: torch.Tensor, *,
                    expected_appearances: float | None = None) -> torch.Tensor:
    """Each encoding's answer: the recovery of the member with the larger coefficient.

    With ``expected_appearances`` (2T: how many encodings each image appears in) each member's λ is
    discounted by (smaller / larger of its cluster's size and 2T) ** ``SIZE_DISCOUNT_POWER``: a cluster
    far larger has absorbed other images' encodings and recovers a blend, one far smaller is half of a
    split image, so the other member is the better answer there.
    """
    score = weights
    if expected_appearances is not None:
        sizes = torch.bincount(members.flatten(), minlength=len(recovered)).to(weights.dtype)
        expected = torch.full_like(sizes, float(expected_appearances))
        reliability = torch.minimum(sizes, expected) / torch.maximum(sizes, expected).clamp_min(1e-12)
        score = weights * reliability[members] ** SIZE_DISCOUNT_POWER
    chosen = members.gather(1, score.argmax(dim=1, keepdim=True)).squeeze(1)
    return recovered[chosen]


def ciphertext_only_attack(encryption: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *, k: int,
                           encodings_per_image: int, mode: str = "cross", device: torch.device | str | None = None,
                           progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                           recovery_steps: int | None = None,
                           public_mean: torch.Tensor | float | None = None, similarity: str = "auto",
                           training: TrainingConfig | None = None,
                           refinement: RefinementConfig | None = None) -> AttackResult:
    """Recover private images from encodings and mixed labels alone.

    Args:
        encryption: (E, H, W, C) encodings in [-1, 1] (``encryption.npy``).
        labels: (E, classes) mixed labels (``label.npy``).
        k, encodings_per_image, mode: public parameters; the private set has E / T images.
        device: where to compute; None: where ``encryption`` is (the CPU for a numpy array).
        progress: called with (stage, fraction) as the attack goes.
        cancel: stops the attack (AttackCancelled) at its next progress report.
        recovery_steps: EM iterations of the recovery (None: the recovery's default).
        public_mean: natural-image pixel mean in [-1, 1] (a float, (C,) or (H, W, C)); the public
            images' mean breaks the sign symmetry of |e|. None: ImageNet's channel means (RGB).
        similarity: "learned" (the network of ``similarity_net``, trained once per configuration in
            this process), "highpass" (the hand-made statistic, no training) or "auto": learned on
            CUDA, high-pass elsewhere (training takes ~145 s on an H100, far longer on a CPU).
        training: the network's training settings (None: ``TrainingConfig()``).
        refinement: None, or how the attack trains a refiner of its recoveries on sets of its own
            (``self_refine``). Each simulated set costs one more attack: on 2 CPU cores the default 4 sets
            and the training add about 5 minutes at 100 × 50.

    Returns:
        One recovered image per cluster and the challenge's per-encoding ``decryption``.
    """
    check_public_parameters(k=k, encodings_per_image=encodings_per_image, mode=mode)
    if similarity not in SIMILARITIES:
        raise InvalidInputError(f"expected one of {list(SIMILARITIES)}, got {similarity!r}", field="similarity")
    if refinement is not None:
        refinement.validate()
    device = attack_device(encryption, device)
    encryption, labels = check_challenge_arrays(encryption, labels, device)
    num_images = max(2, round(len(encryption) / encodings_per_image))
    tracker = StageTracker(progress, cancel)

    def attack_again(encryption_: np.ndarray, labels_: np.ndarray) -> AttackResult:
        """The same attack, unrefined, on a set the refinement simulates."""
        return ciphertext_only_attack(encryption_, labels_, k=k, encodings_per_image=encodings_per_image,
                                      device=device, cancel=cancel, recovery_steps=recovery_steps,
                                      public_mean=public_mean, similarity=similarity, training=training)

    net = None
    if uses_learned_similarity(similarity, device):  # the one optional stage: the high-pass statistic needs no training
        with tracker.stage("training") as report:
            net = cached_similarity_net(tuple(encryption.shape[1:]), k=k, mode=mode,
                                        config=training or TrainingConfig(), device=device, report=report)
    with tracker.stage("similarity") as report:
        features = learned_features(net, encryption) if net is not None else highpass_features(encryption)
        similarities = similarity_matrix(features, class_sets(labels))
    with tracker.stage("clustering") as report:
        # An image appears in about 2T encodings. Each encoding is linked to its nearest T/2 with the
        # high-pass statistic and 3T/2 with the sharper learned one (100 × 50, Max_SSIM; high-pass after one
        # EM run: T/4 0.641, T/2 0.657, T 0.642; learned, one network: T/4 0.738, T/2 0.754, T 0.762, 3T/2 0.766).
        neighbours = max(2, encodings_per_image * 3 // 2 if net is not None else encodings_per_image // 2)
        clustering = cluster_by_class(similarities, labels, num_images, neighbours=neighbours, report=report)
        del similarities
    with tracker.stage("assignment") as report:
        weights = coefficients_from_labels(labels, clustering.members, clustering.cluster_classes)
        report(1.0)
    options = recovery_options(encryption, k, recovery_steps, public_mean)
    with tracker.stage("recovery") as report:
        recovered = recover_privates(encryption.abs(), clustering.members, weights,
                                     num_images=len(clustering.cluster_classes), report=report, **options)
    with tracker.stage("orientation") as report:
        recovered = resolve_orientation(recovered)
    if refinement is not None:
        with tracker.stage("self_refinement") as report:
            recovered = refine_recoveries(recovered, clustering.cluster_classes, attack_again, k=k,
                                          encodings_per_image=encodings_per_image,
                                          public_mean=torch.as_tensor(options["public_mean"]),
                                          config=refinement, report=report)
    return AttackResult(
        recovered=recovered.cpu().float(),
        decryption=pick_decryption(recovered, clustering.members, weights,
                                   expected_appearances=2 * len(encryption) / num_images).cpu().float(),
        members=clustering.members.cpu(),
        coefficients=weights.cpu().float(),
        stage_seconds=dict(tracker.seconds),
        device=str(device),
    )


@register_attack
class CiphertextOnly:
    """The attacker who sees only what is published: the encodings, their mixed labels and k, T and the mode."""

    name = "ciphertext_only"
    title = "ciphertext-only"
    threat = "sees the encodings, their mixed labels and the public parameters (k, T, mode), nothing else"
    family = "instahide"
    holds = frozenset()
    bound = False
    default = True
    starts_from = None

    def stages(self, view: AttackerView, settings: AttackSettings) -> dict[str, float]:
        names = attack_stages(settings.similarity, view.encryption.device, refine=settings.refine_sets > 0)
        return {name: STAGE_WEIGHTS[name] for name in names}

    def check(self, image_shape: tuple[int, int, int]) -> None:
        pass

    def run(self, view: AttackerView, *, start: AttackResult | None, settings: AttackSettings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> AttackResult:
        return ciphertext_only_attack(view.encryption, view.labels, k=view.k,
                                      encodings_per_image=view.encodings_per_image, mode=view.mode,
                                      progress=progress, cancel=cancel, similarity=settings.similarity,
                                      refinement=refinement_config(settings))


def refinement_config(settings: AttackSettings) -> RefinementConfig | None:
    """The self-refinement ``settings`` ask for (``refine_sets`` simulated sets), or None."""
    if settings.refine_sets <= 0:
        return None
    return RefinementConfig(sets=settings.refine_sets, steps=settings.refine_steps)
