"""Level-2 attack on DisguisedNets RMT: m original/disguised pairs give back the permutation and every matrix.
The registered attack ``known_pairs`` runs it on RMT and the codebook (``codebook``) on AES-ECB.

The attacker holds the disguised dataset, m pairs (originals and their disguises under the same key) and the
configuration being audited (block size, method, matrix kind, noise bound), never the key. Three steps:

1. **Permutation.** Every image moves its blocks alike, so a source position i and a target position j belong
   together when the pairs' blocks at j are a linear image of those at i: stacking the m·C·r block rows, the
   residual of the least-squares fit B_j ≈ A_i·R is zero without noise for the true j (and small with noise). An
   orthogonal R also keeps each block row's norm, which is matched too: it alone decides when the rows are too few
   for a fit (m·C·r ≤ s), or too alike (a grey image's equal channels).
   One assignment over the P × P costs (Hungarian) makes it a permutation.
2. **Matrices.** R_i by least squares from the stacked rows, with the noise's known mean N/2 added to the
   originals' side ((X + Δ)·R = (X + N/2)·R + (Δ − N/2)·R: zero-mean noise on the fitted side), minimum-norm
   where the rows leave R open; for an orthogonal key the orthogonal Procrustes solution (the nearest orthogonal
   matrix).
3. **Recovery.** Every disguised image: blocks moved back, times R_i⁻¹, the noise mean taken off, clamped to 0–255.

Without noise one pair recovers every image exactly (up to float rounding).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from instahide_ops.audits.progress import CancelToken, ProgressCallback, StageTracker
from instahide_ops.audits.reconstruction.attack import PAIRS, AttackSettings, register_attack
from instahide_ops.audits.reconstruction.disguisednets.codebook import codebook_attack
from instahide_ops.audits.reconstruction.disguisednets.pairs import check_pairs
from instahide_ops.audits.reconstruction.disguisednets.view import (
    DisguiseAttackResult,
    DisguisedNetsAttack,
    DisguisedView,
    codewords_span_rows,
    unit_range,
)
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets.blocks import from_blocks, to_blocks
from instahide_ops.transforms.disguisednets.keys import DisguisedNetsParams


def _block_rows(images: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """(m, H, W, C) → (P, C, m·r, s) float64: each position's block rows, stacked over the images."""
    blocks = to_blocks(images.to(torch.float64), block)  # (m, P, C, r, s)
    m, p, c, r, s = blocks.shape
    return blocks.permute(1, 2, 0, 3, 4).reshape(p, c, m * r, s)


def match_positions(originals: torch.Tensor, disguised: torch.Tensor, params: DisguisedNetsParams) -> np.ndarray:
    """(P,) int64: the target position of each source position, as the pairs say (a permutation)."""
    rows_in = _block_rows(originals, params.block).flatten(1, 2)  # (P, n, s) with n = C·m·r
    rows_out = _block_rows(disguised, params.block).flatten(1, 2)
    p, n, s = rows_in.shape
    if params.matrix_per_channel:  # each channel has its own R: fit per channel, then add the residuals
        c = originals.shape[-1]
        rows_in, rows_out = rows_in.reshape(p, c, n // c, s), rows_out.reshape(p, c, n // c, s)
    else:
        rows_in, rows_out = rows_in.unsqueeze(1), rows_out.unsqueeze(1)
    if rows_in.shape[2] > s:
        # Residual of projecting B_j on the column space of A_i: ‖B_j‖² − ‖Q_iᵀ B_j‖², Q_i an orthonormal basis.
        basis, _ = torch.linalg.qr(rows_in + params.noise / 2)  # (P, k, rows, s): k is 1, or C with a matrix each
        energy = rows_out.pow(2).sum(dim=(1, 2, 3))
        projected = torch.einsum("ikns,jknt->ijkst", basis, rows_out).pow(2).sum(dim=(2, 3, 4))
        cost = (energy.unsqueeze(0) - projected) / energy.clamp_min(1e-9).unsqueeze(0)
    else:
        cost = torch.zeros(p, p, dtype=rows_in.dtype)
    if params.matrix == "orthogonal":
        # An orthogonal R keeps each row's norm: this alone decides when the rows are too few (or, as in grey
        # images whose channels are equal, too alike) for the fit's residual to tell positions apart.
        norms_in = (rows_in + params.noise / 2).norm(dim=-1).flatten(1)
        norms_out = rows_out.norm(dim=-1).flatten(1)
        cost = cost + torch.cdist(norms_in, norms_out) / norms_out.norm(dim=1).mean().clamp_min(1e-9)
    sources, targets = linear_sum_assignment(cost.numpy())
    permutation = np.empty(p, dtype=np.int64)
    permutation[sources] = targets
    return permutation


def estimate_matrices(originals: torch.Tensor, disguised: torch.Tensor, permutation: np.ndarray,
                      params: DisguisedNetsParams) -> torch.Tensor:
    """(P, 1 or C, s, s) float64: each source position's matrix, from the pairs' blocks it moved to.

    Orthogonal keys: the Procrustes solution. Others: least squares (the noise sits on the disguised side once its
    mean is added to the originals', so the fit is unbiased), minimum-norm where the pairs' rows leave R open.
    """
    rows_in = _block_rows(originals, params.block) + params.noise / 2  # (P, C, m·r, s)
    rows_out = _block_rows(disguised, params.block)[torch.as_tensor(permutation)]
    if not params.matrix_per_channel:
        rows_in, rows_out = rows_in.flatten(1, 2).unsqueeze(1), rows_out.flatten(1, 2).unsqueeze(1)
    if params.matrix == "orthogonal":  # Procrustes: R = U Vᵀ for Aᵀ B = U Σ Vᵀ
        u, _, vh = torch.linalg.svd(rows_in.transpose(-1, -2) @ rows_out)
        return u @ vh
    return torch.linalg.lstsq(rows_in, rows_out, driver="gelsd").solution


def known_pair_attack(disguised: torch.Tensor, pair_originals: torch.Tensor, pair_disguised: torch.Tensor,
                      params: DisguisedNetsParams) -> tuple[torch.Tensor, np.ndarray]:
    """Recover (N, H, W, C) disguised images (0–255, float32) from m known pairs; also the permutation found.

    Raises:
        InvalidInputError: no pairs, shapes that disagree, or parameters that are not RMT's.
    """
    h, w, _ = check_pairs(disguised, pair_originals, pair_disguised, params, method="rmt",
                          other="the codebook attack")
    permutation = match_positions(pair_originals, pair_disguised, params)
    matrices = estimate_matrices(pair_originals, pair_disguised, permutation, params)
    blocks = to_blocks(disguised.to(torch.float64), params.block)[:, torch.as_tensor(permutation)]  # source order
    recovered = blocks @ torch.linalg.pinv(matrices).unsqueeze(0) - params.noise / 2  # pinv: rows may leave R open
    return from_blocks(recovered, h, w).clamp(0, 255).to(torch.float32), permutation


@register_attack
class KnownPairs(DisguisedNetsAttack):
    """Level-2: the attacker holds m original/disguised pairs (RMT: least squares; AES-ECB: the codebook)."""

    name = "known_pairs"
    title = "known pairs (Level-2)"
    threat = ("holds the disguised dataset and m of the owner's images with their disguises under the same key "
              "(the papers' Level-2), never the key")
    holds = frozenset({PAIRS})

    def unsupported(self, params: DisguisedNetsParams) -> str | None:
        return codewords_span_rows(params)

    def stages(self, view: DisguisedView, settings: AttackSettings) -> dict[str, float]:
        return {"known_pairs": 0.05}

    def run(self, view: DisguisedView, *, start: DisguiseAttackResult | None, settings: AttackSettings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> DisguiseAttackResult:
        if view.pairs is None:
            raise InvalidInputError("the known-pair attack needs pairs", field="pairs")
        tracker = StageTracker(progress, cancel)
        hit_rate = None
        with tracker.stage("known_pairs"):
            originals, disguised = view.pairs.originals, view.pairs.disguised
            if view.params.method == "rmt":
                recovered, permutation = known_pair_attack(view.disguised.cpu(), originals.cpu(), disguised.cpu(),
                                                           view.params)
            else:
                found = codebook_attack(view.disguised.cpu(), originals.cpu(), disguised.cpu(), view.params)
                recovered, permutation, hit_rate = found.recovered, found.permutation, found.hit_rate
        return DisguiseAttackResult(unit_range(recovered), permutation, dict(tracker.seconds), hit_rate)
