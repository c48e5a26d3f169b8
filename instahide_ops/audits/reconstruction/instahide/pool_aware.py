"""The attacker who also holds the public pool: each encoding's public images named and taken out.

InstaHide's public images are public by design; only the pool's size is meant to hide which ones an
encoding mixes. A pool an attacker can enumerate (the bundled default pool, which anyone rebuilds from
the same package and seed; any pool published with the data) turns the public mix from noise into
signal. Once each encoding's public mix O is named, ``|e| = |λa·Pa + λb·Pb + O|`` with O known, and the
sign of O decides the sign of most elements: with the true O the recovery reaches per-private SSIM 0.98
on the bundled 100 × 50 set, where treating the publics as noise is bounded by 0.846.

This attack starts from another attack's clusters and recoveries (ciphertext-only, or the key-aware
bound's true pairs) and runs:

- public_mix: EM over the private images in which every other step re-fits each encoding's public mix
  by orthogonal matching pursuit over the pool, on its signed residual (the E-step's signed sum minus the
  private part). Matching pursuit, not a single correlation: the pool's crops overlap and are strongly
  correlated, and one correlation names only a third of an encoding's publics even with the true signs
  (matching pursuit: 96 %). The private part has to be good first, which is why this starts from an
  attack's recoveries and not from zeros (from zeros it locks onto wrong publics). The E-step's signs start
  soft and sharpen over the first half of the steps (``DEFAULT_ANNEAL``), so a first fit's wrong publics do
  not lock an image into a poor basin;
- reclustering (ciphertext-only start): ``|e| − |O|`` is nearly free of public images, so the clustering
  runs again on its high-pass similarity (precision@10 0.915 → 0.975 on 100 × 50);
- recovery, orientation: the EM recovery of ``recovery.recover_privates`` on the new clusters;
- refinement: the public-mix EM again, from those recoveries;
- reassignment (ciphertext-only start): each encoding's two clusters chosen again among all pairs its
  labels allow, each pair scored with a public mix fitted for it (``reassign_pairs``); then recovery,
  orientation and refinement on the new pairs. Encodings with both clusters right: 0.66 → 0.77 on
  100 × 50.
- restarts (both starts): the clusters whose encodings the model fits worst are run again with their
  least-oriented channel flipped (``restart_misfits``), and each keeps whichever run fits its encodings
  better. The public mean barely orients red, so some images settle with red upside down (white comes
  back cyan), a basin the refinement does not leave.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from instahide_ops.audits.progress import CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import (
    POOL,
    AttackerView,
    AttackResult,
    AttackSettings,
    register_attack,
)
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import (
    attack_device,
    check_challenge_arrays,
    pick_decryption,
    recovery_options,
)
from instahide_ops.audits.reconstruction.instahide.clustering import (
    cluster_by_class,
    coefficients_from_labels,
    label_classes,
)
from instahide_ops.audits.reconstruction.instahide.orientation import resolve_orientation
from instahide_ops.audits.reconstruction.instahide.pursuit import (
    WORKING_BYTES,
    PoolGram,
    match_public_mix,
    pursue_from_correlations,
    pursuit_floats_per_target,
)
from instahide_ops.audits.reconstruction.instahide.recovery import (
    design_matrix,
    grid_laplacian_eigen,
    normal_eigen,
    pair_mix,
    recover_privates,
    solve_with_priors,
)
from instahide_ops.audits.reconstruction.instahide.similarity import class_sets, highpass_features, similarity_matrix
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.instahide.pool import PublicPool

# Measured on 100 × 50 from the key-aware recoveries (per-private SSIM 0.830), one setting changed at a
# time from steps 40, re-fit every 2nd, 6 atoms, sum noise 0.02 (0.912).
DEFAULT_ATOMS = 6
"""Pool images matching pursuit names per encoding: the k − 2 = 4 public slots and two spare, which absorb
near-duplicate crops and what is left of the private part (4: 0.903, 8: 0.902)."""

DEFAULT_PUBLIC_MIX_STEPS = 60
"""EM steps of each public-mix stage. Before the annealing, from the key-aware recoveries, per-private SSIM:
10: 0.882, 20: 0.899, 40: 0.912, 60: 0.918. With it, the whole attack on 100 × 50, Max_SSIM seed 0 / seed 1:
40 0.910 / 0.900, 60 0.927 / 0.914, 80 0.926 on seed 0 (soft early signs leave more for the later steps)."""

BOUND_PUBLIC_MIX_STEPS = 160
"""EM steps when the attack continues the key-aware bound (the audit's bound holding the pool): a bound may
spend more. Before the annealing, from the key-aware recoveries of 100 × 50, per-private SSIM: 40 steps 0.946,
80 0.953. With it (annealed over the first half, so more steps also cool more slowly), Max_SSIM seed 0 / seed 1:
80 0.969 / 0.959, 120 0.970 on seed 0, 160 0.975 / 0.962 (the whole bench bound: 0.975 / 0.965, its refinement
and restarts about 85 s longer on two CPU cores)."""

DEFAULT_REFIT_EVERY = 2
"""Public mixes are re-fitted every this many EM steps (every 5th: 0.892)."""

DEFAULT_SUM_NOISE = 0.0075
"""Variance of what the model leaves out of each element (publics matching pursuit missed, private
errors); it sets how sharply the E-step trusts the predicted sign (0.005: 0.927, 0.0075: 0.928, 0.01:
0.926, 0.04: 0.862; from the ciphertext-only attack's clusters, Max_SSIM 0.813 at 0.0075, 0.811 at 0.02)."""

DEFAULT_ANNEAL = 30.0
"""The E-step's sign noise starts at this multiple of the sum noise and falls geometrically to it over the
first ``ANNEAL_FRACTION`` of the steps: while the public mixes are still wrong, soft signs keep an image out
of the basin its first fit chose. The key-aware bound holding the pool on 100 × 50 (80 steps), Max_SSIM
seed 0 / seed 1: 1 (none) 0.954 / 0.937, 10 0.965 / 0.952, 30 0.969 / 0.959, 100 0.969 / 0.960; the whole
attack from the ciphertext-only clusters: 1 0.888 / 0.855, 30 0.910 / 0.900. On 20 × 20 (24 steps), per-private
SSIM: 1 0.906, 10 0.918, 30 0.924, 100 0.914."""

ANNEAL_FRACTION = 0.5
"""Share of a public-mix stage's steps over which the sign noise anneals (at 10×, seed 1's bound: a quarter
0.948, half 0.952, 80 % 0.951)."""

DEFAULT_SMOOTHNESS = 0.1
"""Neighbouring-pixel prior of the M-step: weak, the demixed data carry the images (from the key-aware
recoveries of 100 × 50, 40 steps, per-private SSIM: 3.0 0.863, 1.0 0.928, 0.3 0.944, 0.1 0.946, 0.03 0.947,
0 0.947; the whole attack from the ciphertext-only clusters, Max_SSIM: 1.0 0.862, 0.1 0.882)."""

RECLUSTER_NEIGHBOURS_PER_T = 1.0
"""Links kept per encoding in the reclustering, per encoding of each image (T): the demixed similarity is
sharper than the high-pass one (which keeps T/2), so more links pay (from the ciphertext-only clusters of
seed 0, Max_SSIM after the whole attack: T/4 0.801, T/2 0.813, T 0.834, 3T/2 0.821)."""

DEFAULT_REASSIGNMENT_ROUNDS = 1
"""Rounds of joint pair-and-public-mix reassignment after the refinement (100 × 50, seed 0: encodings with
both clusters right 0.664 → 0.772 after one round)."""

DEFAULT_RESTART_FRACTION = 0.12
"""Share of the clusters, worst fit first, that ``restart_misfits`` runs again. The whole attack on 100 × 50, Max_SSIM
before the annealing: seed 0 0.882 → 0.888, seed 1 0.833 → 0.855; the bound holding the pool 0.954 → 0.954 and 0.937
→ 0.941; with it, the attack 0.907 → 0.910 and 0.876 → 0.900. From seed 1's final recoveries 12 % and 25 % flip red
back in the same 8 clusters (0.831 → 0.860); 40 % only 7 (0.857): more flipped at once disturbs their partners.
Flipping green or blue as well changed nothing on seed 1 and on seed 0 chose three clusters, two of them for the
worse, so only the least-oriented channel is tried."""

STAGES = ("public_mix", "reclustering", "recovery", "orientation", "refinement", "reassignment", "restarts")
# Each stage's rough share of the time (as ciphertext_only.STAGE_WEIGHTS): seconds on two CPU cores over 250.
STAGE_WEIGHTS = {"public_mix": 0.35, "reclustering": 0.04, "recovery": 0.45, "orientation": 0.01, "refinement": 0.36,
                 "reassignment": 1.20, "restarts": 0.35}


def signed_sums(magnitudes: Tensor, prediction: Tensor, noise: float = DEFAULT_SUM_NOISE) -> Tensor:
    """The E-step's reading of each unmasked sum: |e| with the predicted sum's sign, softened by ``noise``."""
    return (magnitudes * prediction).div_(noise).tanh_().mul_(magnitudes)  # one (E, D) buffer throughout


def reassign_pairs(signed: Tensor, labels: Tensor, cluster_classes: Tensor, images: Tensor, gram: PoolGram, *,
                   atoms: int = DEFAULT_ATOMS, chunk: int = 1024,
                   report: Callable[[float], None] | None = None) -> Tensor:
    """Choose each encoding's two clusters again, jointly with its public mix.

    Every pair of clusters of the encoding's two label classes (about 10 × 10) is tried: the pair's
    private part is taken out of the signed sum, matching pursuit names the public mix of what is left,
    and the pair leaving the smallest residual wins. Scoring a pair against the public mix fitted for
    the current pair instead picks the current pair back, even with the true images: the fitted mix has
    absorbed the current pair's errors. Everything is computed from inner products (with the pool, the
    recoveries and the Gram matrix), so no pair's residual is ever formed.

    Args:
        signed: (E, D) each encoding's signed sum as the E-step reads it.
        labels: (E, classes) mixed labels; each encoding's pair is drawn from its two label classes.
        cluster_classes: (M,) each cluster's class.
        images: (M, D) the clusters' recoveries.
        gram: the public pool's ``PoolGram`` (the stored matrix, or rows computed on request for a pool over
            ``pursuit.GRAM_MAX_POOL``: the same choices up to rounding, slower).
        atoms: pool images per public mix.
        chunk: candidate pairs per batch at most. Over a large pool fewer, and the encodings' inner products with
            the pool are held a block at a time, each within ``gram``'s working memory.
        report: called with the fraction of encodings done.

    Returns:
        (E, 2) int64 cluster ids, the heavier label class's first (as ``cluster_by_class`` orders them); two
        clusters of one class in id order.
    """
    pool = gram.pool
    pair_classes = label_classes(labels)
    masses = labels.float().gather(1, pair_classes)
    same = pair_classes[:, 0] == pair_classes[:, 1]
    masses[same] = masses[same] / 2  # as coefficients_from_labels splits a class named twice
    with_images = signed @ images.T  # (E, M)
    images_pool, images_gram = images @ pool.T, images @ images.T
    own = images_gram.diagonal()

    def left_over(batch: Tensor, with_pool: Tensor, first: Tensor, second: Tensor) -> Tensor:
        """(batch, |first|, |second|) squared norm of each signed sum less a pair and the pair's public mix."""
        wa, wb = masses[batch, 0, None, None], masses[batch, 1, None, None]
        # inner products of each target s − wa·Ra − wb·Rb with the pool: (batch, |A|, |B|, N)
        correlations = (with_pool[:, None, None, :] - wa[..., None] * images_pool[first][None, :, None, :]
                        - wb[..., None] * images_pool[second][None, None, :, :])
        squared = ((signed[batch] ** 2).sum(dim=1)[:, None, None]
                   - 2 * wa * with_images[batch][:, first, None] - 2 * wb * with_images[batch][:, None, second]
                   + wa ** 2 * own[first][None, :, None] + wb ** 2 * own[second][None, None, :]
                   + 2 * wa * wb * images_gram[first][:, second][None])
        flat = correlations.reshape(-1, correlations.shape[-1])
        chosen, fit, among_chosen = pursue_from_correlations(flat, gram, atoms=atoms)
        fit = fit.clamp_min(0.0)
        explained = (2 * (fit * flat.gather(1, chosen)).sum(dim=1)
                     - torch.einsum("ri,rij,rj->r", fit, among_chosen, fit))
        return squared - explained.reshape(squared.shape)

    members = torch.zeros_like(pair_classes)
    pairs_per_batch = gram.targets_per_batch(floats_per_target=pursuit_floats_per_target(atoms), limit=chunk)
    block = gram.targets_per_batch(floats_per_target=1, limit=len(signed))  # encodings correlated with the pool at once
    done = 0
    for begin in range(0, len(signed), block):
        with_pool = signed[begin:begin + block] @ pool.T
        in_block = pair_classes[begin:begin + block]
        for first_class, second_class in torch.unique(in_block, dim=0).tolist():
            first = (cluster_classes == first_class).nonzero().flatten()
            second = (cluster_classes == second_class).nonzero().flatten()
            if len(first) == 0 or len(second) == 0:  # a class without clusters: keep zeros, as the labels allow none
                continue
            local = ((in_block[:, 0] == first_class) & (in_block[:, 1] == second_class)).nonzero().flatten()
            rows_step = max(1, pairs_per_batch // (len(first) * len(second)))
            # one encoding's pairs may pass the batch too (many clusters, a huge pool): then they go in parts
            second_step = min(len(second), pairs_per_batch)
            first_step = max(1, pairs_per_batch // second_step)
            distinct = first_class == second_class and len(first) > 1  # two different images of the one class
            for start in range(0, len(local), rows_step):
                batch = begin + local[start:start + rows_step]
                lowest = torch.full((len(batch),), float("inf"), device=signed.device)
                with gram.sharing_rows():  # the batch's pursuits choose mostly the same images
                    for part_a, part_b in itertools.product(first.split(first_step), second.split(second_step)):
                        residual = left_over(batch, with_pool[batch - begin], part_a, part_b)
                        if distinct:
                            residual = residual.masked_fill(part_a[:, None] == part_b[None, :], float("inf"))
                        flat = residual.reshape(len(batch), -1)
                        best = flat.argmin(dim=1)
                        value = flat.gather(1, best[:, None]).squeeze(1)
                        better = value < lowest
                        lowest = torch.where(better, value, lowest)
                        members[batch[better], 0] = part_a[best[better] // len(part_b)]
                        members[batch[better], 1] = part_b[best[better] % len(part_b)]
                done += len(batch)
                if report is not None:
                    report(done / len(labels))
    # Two clusters of one class carry equal masses, so either order leaves the same residual: an exact tie that
    # rounding (which differs between CPUs' matrix kernels) would break either way. The smaller id goes first.
    members[same] = members[same].sort(dim=1).values
    return members


def refine_with_pool(magnitudes: Tensor, members: Tensor, weights: Tensor, images: Tensor, pool: Tensor, *,
                     steps: int = DEFAULT_PUBLIC_MIX_STEPS, refit_every: int = DEFAULT_REFIT_EVERY,
                     sum_noise: float = DEFAULT_SUM_NOISE, smoothness: float = DEFAULT_SMOOTHNESS,
                     atoms: int = DEFAULT_ATOMS, anneal: float = DEFAULT_ANNEAL, public_mean: Tensor | float = 0.0,
                     gram: PoolGram | None = None,
                     report: Callable[[float], None] | None = None) -> tuple[Tensor, Tensor]:
    """EM over the private images with each encoding's public mix fitted from the pool.

    Args:
        magnitudes: (E, H, W, C) |e|.
        members: (E, 2) each encoding's two private images (or clusters).
        weights: (E, 2) their coefficients.
        images: (M, H, W, C) the starting recoveries (an attack's).
        pool: (N, H, W, C) the public pool in [-1, 1].
        steps, refit_every, sum_noise, smoothness, atoms, anneal: see the module's constants (anneal 1
            keeps the sign noise at ``sum_noise`` throughout).
        public_mean: natural-image pixel mean (a float or (C,)); the first fit reads signs against the
            public mass times it, as the attacks' recovery does.
        gram: the pool's ``PoolGram``, from a caller that refines against one pool several times (None: built
            here).
        report: called with the fraction done after every step; an exception it raises stops the run.

    Returns:
        (M, H, W, C) refined images in [-1, 1] and (E, H, W, C) each encoding's fitted public mix.
    """
    num_enc, height, width, channels = magnitudes.shape
    if images.shape[1:] != magnitudes.shape[1:] or pool.shape[1:] != magnitudes.shape[1:]:
        raise InvalidInputError(f"images {list(images.shape)} and pool {list(pool.shape)} must be "
                                f"(·, {height}, {width}, {channels}) like the encodings", field="pool")
    if steps < 1 or refit_every < 1 or not sum_noise > 0 or smoothness < 0 or not anneal >= 1:
        raise InvalidInputError("steps and refit_every must be >= 1, sum_noise > 0, smoothness >= 0, anneal >= 1",
                                field="steps")
    num_images = len(images)
    y = magnitudes.abs().reshape(num_enc, -1)
    flat_pool = pool.to(y).reshape(len(pool), -1)  # follows the magnitudes, as members and weights do
    members = members.to(y.device).long()
    weights = weights.to(y)
    design = design_matrix(members, weights, num_images)
    normal = normal_eigen(design)
    grid = grid_laplacian_eigen(height, width, like=y)
    privates = images.to(y).reshape(num_images, height * width, channels).clone()

    def private_part() -> Tensor:
        return pair_mix(privates.reshape(num_images, -1), members, weights)

    if gram is None:
        gram = PoolGram(flat_pool)

    def refit(private: Tensor, prior_mix: Tensor, noise: float) -> Tensor:
        signed = signed_sums(y, private + prior_mix, noise)
        chosen, fit = match_public_mix(signed - private, flat_pool, atoms=atoms, gram=gram)
        return (fit[:, :, None] * flat_pool[chosen]).sum(dim=1)

    mean = torch.as_tensor(public_mean, device=y.device, dtype=y.dtype).broadcast_to((channels,))
    public_mass = (1.0 - weights.sum(dim=1)).clamp_min(0.0)
    private = private_part()
    # Softer signs for the first fit: the prior mix is only the mean's.
    public_mix = refit(private, public_mass[:, None] * mean.repeat(height * width), 2.5 * sum_noise)
    for step in range(steps):
        noise = sum_noise * anneal ** max(0.0, 1.0 - step / (ANNEAL_FRACTION * steps))
        signed = signed_sums(y, private + public_mix, noise)
        demixed = signed.sub_(public_mix).reshape(num_enc, height * width, channels)
        for c in range(channels):
            privates[..., c] = solve_with_priors(design.T @ demixed[..., c], normal, grid, smoothness,
                                                 (height, width))
        privates.clamp_(-1.0, 1.0)
        private = private_part()  # for the re-fit and the next E-step alike
        if step % refit_every == refit_every - 1:
            public_mix = refit(private, public_mix, noise)
        if report is not None:
            report((step + 1) / steps)
    return (privates.reshape(num_images, height, width, channels),
            public_mix.reshape(num_enc, height, width, channels))


def cluster_misfit(magnitudes: Tensor, members: Tensor, weights: Tensor, images: Tensor,
                   public_mix: Tensor) -> Tensor:
    """(M,) how badly each cluster's encodings are explained: each encoding's ``mean((|e| − |λa·Pa + λb·Pb
    + O|)²)``, O its fitted public mix, averaged over the encodings the cluster is a member of.

    Clusters no encoding names get 0. All tensors flattened or not: (E, ...) magnitudes and public
    mixes, (M, ...) images, (E, 2) members and weights.
    """
    num_enc, num_images = len(magnitudes), len(images)
    prediction = pair_mix(images.reshape(num_images, -1), members, weights) + public_mix.reshape(num_enc, -1)
    per_encoding = (magnitudes.reshape(num_enc, -1) - prediction.abs()).square().mean(dim=1)
    slots = members.flatten()  # each encoding's two clusters, in turn
    total = torch.bincount(slots, weights=per_encoding.repeat_interleave(2), minlength=num_images)
    return total / torch.bincount(slots, minlength=num_images).clamp_min(1)


def restart_misfits(magnitudes: Tensor, members: Tensor, weights: Tensor, images: Tensor, public_mix: Tensor,
                    refine: Callable[[Tensor], tuple[Tensor, Tensor]], *, channel: int,
                    fraction: float = DEFAULT_RESTART_FRACTION) -> Tensor:
    """Run the worst-fitting clusters again with one channel flipped; each keeps the better-fitting run.

    Magnitudes cannot tell a channel from its negative, and the public mean (what orients channels in
    ``recover_privates``) is nearly zero for red, so an image can settle with red upside down. The
    refinement then fits public mixes around the wrong sign and stays in that basin, but the encodings
    still tell the two apart: the right orientation leaves a smaller misfit (``cluster_misfit``).

    Args:
        magnitudes: (E, H, W, C) |e|; members, weights: (E, 2) the pairs and their coefficients.
        images: (M, H, W, C) the current recoveries; public_mix: (E, H, W, C) their fitted public mixes.
        refine: runs the public-mix EM from given (M, H, W, C) images and returns its images and public
            mixes (``refine_with_pool`` with the attack's settings).
        channel: the channel to flip (the one the public mean orients least).
        fraction: share of the clusters restarted, worst misfit first (at least one when positive).

    Returns:
        (M, H, W, C) images: the restarted run's for the clusters whose misfit it lowered, the given
        ones elsewhere.
    """
    if not 0.0 <= fraction <= 1.0:
        raise InvalidInputError(f"must lie in [0, 1], got {fraction}", field="restart_fraction")
    if not 0 <= channel < images.shape[-1]:
        raise InvalidInputError(f"must lie in [0, {images.shape[-1]}), got {channel}", field="channel")
    if fraction == 0.0:
        return images
    misfit = cluster_misfit(magnitudes, members, weights, images, public_mix)
    worst = misfit.argsort(descending=True)[:max(1, round(fraction * len(images)))]
    start = images.clone()
    start[worst, ..., channel] = -start[worst, ..., channel]
    restarted, restarted_mix = refine(start)
    better = worst[cluster_misfit(magnitudes, members, weights, restarted, restarted_mix)[worst] < misfit[worst]]
    chosen = images.clone()
    chosen[better] = restarted[better]
    return chosen


def least_oriented_channel(public_mean: Tensor | float, channels: int) -> int:
    """The channel whose natural-image mean lies nearest zero: the one the public mean orients least."""
    mean = torch.as_tensor(public_mean, dtype=torch.float32).reshape(-1).broadcast_to((channels,))
    return int(mean.abs().argmin())


def pool_aware_attack(encryption: np.ndarray | Tensor, labels: np.ndarray | Tensor, *, pool: PublicPool,
                      start: AttackResult, encodings_per_image: int, k: int = 6, recluster: bool = True,
                      device: torch.device | str | None = None, progress: ProgressCallback | None = None,
                      cancel: CancelToken | None = None, steps: int = DEFAULT_PUBLIC_MIX_STEPS,
                      reassignment_rounds: int = DEFAULT_REASSIGNMENT_ROUNDS,
                      restart_fraction: float = DEFAULT_RESTART_FRACTION,
                      working_bytes: int = WORKING_BYTES) -> AttackResult:
    """Recover the private images as an attacker who holds the public pool the encodings mixed in.

    Args:
        encryption: (E, H, W, C) encodings; labels: (E, classes) their mixed labels.
        pool: the public pool the deployment mixes in (what the attacker holds).
        start: the result of the attack this one continues (``ciphertext_only``, or ``key_aware`` with
            ``recluster=False``): its members, coefficients and recoveries.
        encodings_per_image: T (the public parameter).
        k: images per mix (cross mode).
        recluster: cluster again on the demixed magnitudes (an attacker without keys); False keeps the
            start's members (the key-aware bound's true pairs).
        device, progress, cancel: as for the other attacks.
        steps: EM steps of each public-mix stage.
        reassignment_rounds: rounds of ``reassign_pairs`` and recovery after the refinement (reclustering
            only).
        restart_fraction: share of the clusters ``restart_misfits`` runs again at the end; 0 leaves the
            stage out.
        working_bytes: memory the pursuits over the pool may hold (``pursuit.PoolGram``): the pool's Gram
            matrix is stored only when it fits, and each batch of pursuits fits in it. Sharing computed rows
            adds up to a quarter more.

    Returns:
        One recovered image per cluster and each encoding's decryption.
    """
    device = attack_device(encryption, device)
    encryption, labels = check_challenge_arrays(encryption, labels, device)
    if tuple(pool.image_shape) != tuple(encryption.shape[1:]):
        raise InvalidInputError(f"pool images are {list(pool.image_shape)}, encodings "
                                f"{list(encryption.shape[1:])}", field="pool")
    if start.members.shape != (len(encryption), 2):
        raise InvalidInputError(f"the start's members are {list(start.members.shape)}, expected "
                                f"[{len(encryption)}, 2]", field="start")
    if reassignment_rounds < 0:
        raise InvalidInputError(f"must be at least 0, got {reassignment_rounds}", field="reassignment_rounds")
    if not 0.0 <= restart_fraction <= 1.0:
        raise InvalidInputError(f"must lie in [0, 1], got {restart_fraction}", field="restart_fraction")
    tracker = StageTracker(progress, cancel)
    num_images = max(2, round(len(encryption) / encodings_per_image))  # as the ciphertext-only attack counts
    magnitudes = encryption.abs()
    public = pool.to(device).images.float()
    members, weights = start.members.to(device), start.coefficients.to(device)
    options = recovery_options(encryption, k, None, None)
    atoms = min(DEFAULT_ATOMS, len(pool))
    flat_pool = public.reshape(len(public), -1)
    # Built once: every public-mix stage and the reassignment use it.
    gram = PoolGram(flat_pool, working_bytes=working_bytes)
    def refine(members: Tensor, weights: Tensor, images: Tensor, report: Callable[[float], None]):
        return refine_with_pool(magnitudes, members, weights, images, public, steps=steps, atoms=atoms,
                                public_mean=options["public_mean"], gram=gram, report=report)

    with tracker.stage("public_mix") as report:
        recovered, public_mix = refine(members, weights, start.recovered.to(device), report)
    if recluster:
        with tracker.stage("reclustering") as report:
            demixed = highpass_features(magnitudes - public_mix.abs())
            clustering = cluster_by_class(similarity_matrix(demixed, class_sets(labels)), labels, num_images,
                                          neighbours=max(2, round(RECLUSTER_NEIGHBOURS_PER_T * encodings_per_image)),
                                          report=report)
            members = clustering.members
            weights = coefficients_from_labels(labels, members, clustering.cluster_classes)

        def recover(members: Tensor, weights: Tensor, report: Callable[[float], None]) -> Tensor:
            return recover_privates(magnitudes, members, weights, num_images=len(clustering.cluster_classes),
                                    report=report, **options)

        with tracker.stage("recovery") as report:
            recovered = recover(members, weights, report)
        with tracker.stage("orientation"):
            recovered = resolve_orientation(recovered)
        with tracker.stage("refinement") as report:
            recovered, public_mix = refine(members, weights, recovered, report)
        for _ in range(reassignment_rounds):
            with tracker.stage("reassignment") as report:
                flat = recovered.reshape(len(recovered), -1)
                prediction = pair_mix(flat, members, weights) + public_mix.reshape(len(members), -1)
                members = reassign_pairs(signed_sums(magnitudes.reshape(len(members), -1), prediction), labels,
                                         clustering.cluster_classes, flat, gram, atoms=atoms,
                                         report=lambda f: report(0.25 * f))
                weights = coefficients_from_labels(labels, members, clustering.cluster_classes)
                recovered = recover(members, weights, lambda f: report(0.25 + 0.4 * f))
                recovered, public_mix = refine(members, weights, resolve_orientation(recovered),
                                               lambda f: report(0.65 + 0.35 * f))
    if restart_fraction > 0:
        with tracker.stage("restarts") as report:
            recovered = restart_misfits(magnitudes, members, weights, recovered, public_mix,
                                        lambda images: refine(members, weights, images, report),
                                        channel=least_oriented_channel(options["public_mean"], magnitudes.shape[-1]),
                                        fraction=restart_fraction)
    expected = 2 * len(encryption) / num_images
    return AttackResult(
        recovered=recovered.cpu().float(),
        decryption=pick_decryption(recovered, members, weights, expected_appearances=expected).cpu().float(),
        members=members.cpu(),
        coefficients=weights.cpu().float(),
        stage_seconds=dict(tracker.seconds),
        device=str(device),
    )


@register_attack
class PoolAware:
    """The ciphertext-only attacker who also holds the public pool the encodings mixed in."""

    name = "pool_aware"
    title = "pool-aware"
    threat = ("sees what the ciphertext-only attacker sees and holds the public pool the encodings mixed in, "
              "which InstaHide makes public and the bundled pool is rebuilt by anyone")
    family = "instahide"
    holds = frozenset({POOL})
    bound = False
    default = True
    starts_from = "ciphertext_only"

    def stages(self, view: AttackerView, settings: AttackSettings) -> dict[str, float]:
        return {stage: STAGE_WEIGHTS[stage] for stage in STAGES}

    def check(self, image_shape: tuple[int, int, int]) -> None:
        pass

    def run(self, view: AttackerView, *, start: AttackResult | None, settings: AttackSettings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> AttackResult:
        if start is None or view.pool is None:
            raise InvalidInputError("the pool-aware attack continues the ciphertext-only attack, holding the pool",
                                    field="start")
        return pool_aware_attack(view.encryption, view.labels, pool=view.pool, start=start,
                                 encodings_per_image=view.encodings_per_image, k=view.k, progress=progress,
                                 cancel=cancel, working_bytes=settings.working_bytes)
