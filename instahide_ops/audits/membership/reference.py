"""Attacks with reference models: the owner (or an attacker) trained K models on known subsets of the audit set.

LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles"): an example's logit-scaled
confidence log p_y - log sum_{i != y} p_i is close to Gaussian across models that trained on it (IN) and across
models that did not (OUT). Online, the score is the likelihood ratio N(s; mu_in, sigma_in) / N(s; mu_out,
sigma_out) of the target's s; offline, with OUT models only, the one-sided test of s against N(mu_out, sigma_out),
returned as the z-score (s - mu_out) / sigma_out, which ranks as the test's p-value without its rounding to 1.
Means are fitted per example; the variances are fixed: pooled over every example, LiRA's choice for few
reference models (its "fixed variance": CIFAR-10 with 16 models, online AUC 0.686 and TPR 5.9 % at 0.1 % FPR). An
example without IN (OUT) references takes its OUT (IN) mean shifted by the average gap between the two.

RMIA (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference Attacks"): the likelihood ratio
Pr(x | theta) / Pr(x), with Pr(x | theta) the target's probability of the label and Pr(x) its average over
reference models, half of them IN and half OUT: (Pr_IN(x) + Pr_OUT(x)) / 2. Where an example has no IN reference
the paper's offline approximation Pr_IN(x) ~ a Pr_OUT(x) + (1 - a) stands in for it. The score is the share of
population points z whose ratio x's exceeds more than gamma-fold; the audit set's examples are the population.

Segmentation: each model's score of an example is the mean over its non-ignored pixels (Pr(x | theta): the
geometric mean of the pixels' label probabilities).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from instahide_ops.audits.membership import statistics
from instahide_ops.audits.membership.attack import MembershipResult, MembershipView, register_membership_attack
from instahide_ops.audits.membership.data import TASKS, MembershipData
from instahide_ops.audits.progress import CancelToken

RMIA_OFFLINE_A = 0.3  # the paper tunes a per dataset; 0.3 is its CIFAR-10 setting
RMIA_GAMMA = 1.0  # with the audit set as the population every gamma ranks alike; 1 keeps every distinct score apart
_MIN_SIGMA = 1e-6


def model_scores(data: MembershipData, statistic: Callable[..., np.ndarray], *,
                 cancel: CancelToken | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``statistic`` (of ``statistics``) of the target's outputs, (N,), and of each reference's, (K, N)."""
    cancel = cancel or CancelToken()
    labels = np.asarray(data.labels)
    target = statistic(data.log_probabilities(), labels, ignore_index=data.ignore_index)
    references = []
    for outputs in data.reference_outputs:  # one model at a time: K copies of segmentation outputs are large
        cancel.raise_if_cancelled()
        reference = dataclasses.replace(data, outputs=outputs, reference_outputs=None, reference_member=None)
        references.append(statistic(reference.log_probabilities(), labels, ignore_index=data.ignore_index))
    cancel.raise_if_cancelled()
    return target, np.stack(references)


def lira_scores(target: np.ndarray, references: np.ndarray, reference_member: np.ndarray, *, online: bool
                ) -> np.ndarray:
    """LiRA with fixed variance: (N,) log-likelihood ratio IN/OUT (online) or the OUT z-score (offline).

    Args:
        target: (N,) the target model's logit-scaled confidences.
        references: (K, N) the reference models'.
        reference_member: (K, N) bool, reference k trained on example n.
    """
    inside = np.asarray(reference_member, dtype=bool)
    mu_in, sigma_in = _gaussian_fit(references, inside)
    mu_out, sigma_out = _gaussian_fit(references, ~inside)
    both = ~np.isnan(mu_in) & ~np.isnan(mu_out)
    gap = (np.mean(mu_in[both] - mu_out[both]) if both.any()
           else references[inside].mean() - references[~inside].mean())
    mu_in = np.where(np.isnan(mu_in), mu_out + gap, mu_in)
    mu_out = np.where(np.isnan(mu_out), mu_in - gap, mu_out)
    if np.isnan(sigma_in) and np.isnan(sigma_out):  # one reference score an example: LiRA code's global spread
        sigma_in = sigma_out = references.std()
    sigma_in = max(sigma_out if np.isnan(sigma_in) else sigma_in, _MIN_SIGMA)
    sigma_out = max(sigma_in if np.isnan(sigma_out) else sigma_out, _MIN_SIGMA)
    if not online:
        return (target - mu_out) / sigma_out
    return _log_normal(target, mu_in, sigma_in) - _log_normal(target, mu_out, sigma_out)


def rmia_scores(target: np.ndarray, references: np.ndarray, reference_member: np.ndarray, *,
                a: float = RMIA_OFFLINE_A, gamma: float = RMIA_GAMMA) -> np.ndarray:
    """RMIA: (N,) the share of the other examples z with ratio(x) / ratio(z) > gamma.

    Args:
        target: (N,) log Pr(x | theta), the target's log-probability of the label.
        references: (K, N) the reference models' log Pr(x | theta').
        reference_member: (K, N) bool.
        a: the offline approximation's Pr_IN ~ a Pr_OUT + (1 - a), for examples without an IN reference.
        gamma: how many times z's ratio x's must exceed.
    """
    inside = np.asarray(reference_member, dtype=bool)
    probabilities = np.exp(references)
    p_in, p_out = _masked_mean(probabilities, inside), _masked_mean(probabilities, ~inside)
    p_in = np.where(np.isnan(p_in), a * p_out + (1 - a), p_in)
    p_out = np.where(np.isnan(p_out), p_in, p_out)  # IN references only: Pr(x) is their mean
    log_ratio = target - np.log((p_in + p_out) / 2)
    below = np.searchsorted(np.sort(log_ratio), log_ratio - np.log(gamma), side="left")
    return below / (len(log_ratio) - 1)


def _gaussian_fit(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-example means over the masked scores (NaN where none) and one standard deviation pooled over every
    example's deviations from its mean (NaN when no example has two)."""
    means = _masked_mean(scores, mask)
    counts = mask.sum(axis=0)
    deviations = np.where(mask, scores - np.nan_to_num(means), 0.0)
    freedom = int((counts - 1).clip(min=0).sum())
    return means, (float(np.sqrt((deviations ** 2).sum() / freedom)) if freedom else float("nan"))


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(mask, values, 0.0).sum(axis=0) / counts, np.nan)


def _log_normal(x: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
    return -0.5 * ((x - mean) / sigma) ** 2 - np.log(sigma)


class ReferenceAttack:
    tasks: ClassVar[frozenset[str]] = frozenset(TASKS)
    needs_references: ClassVar[bool] = True
    default: ClassVar[bool] = True


@register_membership_attack
class LiraOnlineAttack(ReferenceAttack):
    name = "lira_online"
    title = "LiRA (online)"
    threat = ("fits each example's logit-scaled confidence under reference models that trained on it and that did "
              "not, and tests the target's against both (Carlini et al. 2022)")

    def run(self, view: MembershipView, *, cancel: CancelToken | None = None) -> MembershipResult:
        start = time.perf_counter()
        target, references = model_scores(view.data, statistics.logit_scaled_confidence, cancel=cancel)
        scores = lira_scores(target, references, view.data.reference_is_member, online=True)
        return MembershipResult(scores, time.perf_counter() - start)


@register_membership_attack
class LiraOfflineAttack(ReferenceAttack):
    name = "lira_offline"
    title = "LiRA (offline)"
    threat = ("tests the target's logit-scaled confidence against its fit under reference models that did not "
              "train on the example (Carlini et al. 2022)")

    def run(self, view: MembershipView, *, cancel: CancelToken | None = None) -> MembershipResult:
        start = time.perf_counter()
        target, references = model_scores(view.data, statistics.logit_scaled_confidence, cancel=cancel)
        scores = lira_scores(target, references, view.data.reference_is_member, online=False)
        return MembershipResult(scores, time.perf_counter() - start)


@register_membership_attack
class RmiaAttack(ReferenceAttack):
    name = "rmia"
    title = "RMIA"
    threat = ("compares the target's probability of the label, relative to the reference models', with that of "
              "population examples (Zarifzadeh et al. 2024)")

    def run(self, view: MembershipView, *, cancel: CancelToken | None = None) -> MembershipResult:
        start = time.perf_counter()
        target, references = model_scores(view.data, statistics.label_log_probability, cancel=cancel)
        scores = rmia_scores(target, references, view.data.reference_is_member)
        return MembershipResult(scores, time.perf_counter() - start)
