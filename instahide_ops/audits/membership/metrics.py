"""How well membership scores separate members from non-members: ROC, AUC, advantage, TPR at low FPR.

LiRA's convention first (Carlini et al. 2022, "Membership Inference Attacks From First Principles"): an attack is
judged by its true-positive rate at a low false-positive rate, read off the ROC as the largest TPR whose FPR is at
most the target, and drawn on log-log axes; the AUC and TF-Privacy's advantage max |TPR - FPR| (Yeom et al. 2018)
come second. A TPR at FPR f is "not estimable" (None) when there are fewer than 1/f non-members: no threshold then
has a false-positive rate in (0, f].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instahide_ops.errors import InvalidInputError

FPRS = (0.1, 0.01, 0.001, 0.00001)
"""The false-positive rates every report reads the TPR at."""

ROC_POINTS = 1000
"""About how many ROC points a report keeps (both ends always): half spread evenly along the curve, half at
logarithmically spaced FPRs, so the log-log plot keeps its low-FPR end."""


@dataclass(frozen=True)
class MembershipMetrics:
    """How one set of scores separates members from non-members.

    Attributes:
        auc: area under the ROC (ties count half, as sklearn's roc_auc_score).
        advantage: max over thresholds of |TPR - FPR| (TF-Privacy's).
        tpr_at_fpr: FPR -> the largest TPR at an FPR at most that; None where fewer than 1/FPR non-members.
        fpr, tpr: the ROC curve from (0, 0) to (1, 1), thinned to about ``ROC_POINTS`` points.
        members, non_members: how many of each were scored.
    """

    auc: float
    advantage: float
    tpr_at_fpr: dict[float, float | None]
    fpr: np.ndarray
    tpr: np.ndarray
    members: int = 0
    non_members: int = 0

    def to_dict(self) -> dict:
        """The figures, JSON-ready (the curve left out; FPRs as "0.01"-style keys)."""
        return {"auc": self.auc, "advantage": self.advantage, "members": self.members,
                "non_members": self.non_members,
                "tpr_at_fpr": {f"{fpr:g}": tpr for fpr, tpr in self.tpr_at_fpr.items()}}


def membership_metrics(scores: np.ndarray, member: np.ndarray) -> MembershipMetrics:
    """ROC, AUC, advantage and TPR at ``FPRS`` of membership scores (higher score = member).

    Args:
        scores: (N,) finite or infinite numbers (no NaN).
        member: (N,) bool, at least one of each.

    Raises:
        InvalidInputError: "scores" NaN or a shape other than member's; "member" without both sides.

    Examples:
        >>> m = membership_metrics(np.array([0.9, 0.8, 0.3, 0.1]), np.array([True, False, True, False]))
        >>> m.auc, m.tpr_at_fpr[0.1]
        (0.75, None)
    """
    scores = np.asarray(scores, dtype=np.float64)
    member = np.asarray(member).astype(bool)
    if scores.shape != member.shape or scores.ndim != 1:
        raise InvalidInputError(f"expected shape {member.shape} (one score an example), got {scores.shape}",
                                field="scores")
    if np.isnan(scores).any():
        raise InvalidInputError("scores must not be NaN", field="scores")
    positives = int(member.sum())
    negatives = len(member) - positives
    if not positives or not negatives:
        raise InvalidInputError(f"need members and non-members, got {positives} and {negatives}", field="member")
    fpr, tpr = roc_curve(scores, member)
    auc = float(np.trapezoid(tpr, fpr))
    tpr_at_fpr = {target: (None if negatives * target < 1 - 1e-9 else float(tpr[fpr <= target].max()))
                  for target in FPRS}
    keep = _thinned(fpr)
    return MembershipMetrics(auc=auc, advantage=float(np.abs(tpr - fpr).max()), tpr_at_fpr=tpr_at_fpr,
                             fpr=fpr[keep], tpr=tpr[keep], members=positives, non_members=negatives)


def roc_curve(scores: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1): sklearn's roc_curve without dropping
    collinear points."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], member[order]
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold takes every example scored as high
    true_positives = np.cumsum(hits)[last_of_tie]
    false_positives = np.cumsum(~hits)[last_of_tie]
    return (np.r_[0.0, false_positives / false_positives[-1]], np.r_[0.0, true_positives / true_positives[-1]])


def _thinned(fpr: np.ndarray) -> np.ndarray:
    """Indices of about ``ROC_POINTS`` points of the curve: evenly along it and at log-spaced FPRs, both ends."""
    if len(fpr) <= ROC_POINTS:
        return np.arange(len(fpr))
    even = np.linspace(0, len(fpr) - 1, ROC_POINTS // 2).round().astype(np.int64)
    low = np.searchsorted(fpr, np.geomspace(1e-6, 1.0, ROC_POINTS // 2), side="right") - 1
    return np.unique(np.r_[0, even, low, len(fpr) - 1].clip(0, len(fpr) - 1))
