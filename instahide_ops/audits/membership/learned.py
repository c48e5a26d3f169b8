"""Trained attacks: a classifier learns membership from the outputs, as TF-Privacy's membership-inference attacks do.

Features per example: the sorted posteriors (the largest ``TOP_POSTERIORS``; sorting makes them class-free, as in
Salem et al. 2019, "ML-Leaks"), the label's probability and the loss, standardised; for segmentation each is the
mean over the example's non-ignored pixels. The attacker is given the membership of part of the audit set, as
TF-Privacy's ``run_attacks`` is: the set is split into ``FOLDS`` stratified folds, a classifier is trained on
four and scores the fifth, so every example's score comes from a model that never saw it (Shokri et al. 2017's
attack model, trained on data disjoint from what it judges).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from instahide_ops.audits.membership import statistics
from instahide_ops.audits.membership.attack import MembershipResult, MembershipView, register_membership_attack
from instahide_ops.audits.membership.data import TASKS, MembershipData
from instahide_ops.audits.progress import CancelToken

FOLDS = 5
TOP_POSTERIORS = 10  # beyond the tenth, sorted posteriors are near 0 and add features, not evidence
MLP_HIDDEN = (64,)


def attack_features(data: MembershipData) -> np.ndarray:
    """(N, min(C, TOP_POSTERIORS) + 2) float64: the sorted posteriors (largest first), p_y and -log p_y, each the
    mean over non-ignored pixels for segmentation."""
    log_probabilities = data.log_probabilities()
    labels = np.asarray(data.labels)
    top = min(data.classes, TOP_POSTERIORS)
    # the largest ``top`` posteriors, largest first, without sorting all C
    largest = -np.partition(-log_probabilities, top - 1, axis=1)[:, :top]
    sorted_posteriors = np.exp(-np.sort(-largest, axis=1))
    columns = [statistics.example_mean(sorted_posteriors[:, i], labels, data.ignore_index) for i in range(top)]
    log_label = statistics.label_log_probability(log_probabilities, labels, ignore_index=data.ignore_index)
    label_probability = statistics.label_probability(log_probabilities, labels, ignore_index=data.ignore_index)
    return np.column_stack([*columns, label_probability, -log_label])


def out_of_fold_scores(features: np.ndarray, member: np.ndarray, make_classifier: Callable[[int], ClassifierMixin],
                       *, folds: int = FOLDS, seed: int | None = None, cancel: CancelToken | None = None
                       ) -> np.ndarray:
    """(N,) float64 each example's member probability from a classifier trained on the other folds only.

    Args:
        features: (N, F) per-example features.
        member: (N,) bool.
        make_classifier: a fresh classifier from a seed (one per fold).
        folds: the number of stratified folds (each side needs at least this many examples; fewer folds else).
        seed: the folds' and classifiers' randomness (None: fresh).
    """
    cancel = cancel or CancelToken()
    member = np.asarray(member, dtype=bool)
    folds = max(2, min(folds, int(member.sum()), int((~member).sum())))
    rng = np.random.default_rng(seed)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(rng.integers(2**31)))
    scores = np.empty(len(member), dtype=np.float64)
    for train, held_out in splitter.split(features, member):
        cancel.raise_if_cancelled()
        classifier = make_classifier(int(rng.integers(2**31)))
        classifier.fit(features[train], member[train])
        scores[held_out] = classifier.predict_proba(features[held_out])[:, list(classifier.classes_).index(True)]
    cancel.raise_if_cancelled()
    return scores


class TrainedAttack:
    """Scores out-of-fold with the classifier ``make_classifier`` builds; subclasses choose it."""

    tasks: ClassVar[frozenset[str]] = frozenset(TASKS)
    needs_references: ClassVar[bool] = False
    default: ClassVar[bool] = True

    def make_classifier(self, seed: int) -> ClassifierMixin:
        raise NotImplementedError

    def run(self, view: MembershipView, *, cancel: CancelToken | None = None) -> MembershipResult:
        start = time.perf_counter()
        scores = out_of_fold_scores(attack_features(view.data), view.data.is_member, self.make_classifier,
                                    seed=view.seed, cancel=cancel)
        return MembershipResult(scores, time.perf_counter() - start)


@register_membership_attack
class LogisticRegressionAttack(TrainedAttack):
    name = "logistic_regression"
    title = "logistic regression"
    threat = ("trains a logistic regression on the sorted posteriors and the label's, knowing the membership of the "
              "other folds (TF-Privacy)")

    def make_classifier(self, seed: int) -> ClassifierMixin:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


@register_membership_attack
class MlpAttack(TrainedAttack):
    name = "mlp"
    title = "MLP"
    threat = ("trains a one-hidden-layer perceptron on the sorted posteriors and the label's, knowing the membership "
              "of the other folds (TF-Privacy)")

    def make_classifier(self, seed: int) -> ClassifierMixin:
        # early stopping on a tenth of the training folds: the attack's own overfitting would only add noise
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=MLP_HIDDEN, early_stopping=True,
                                                             max_iter=200, random_state=seed))

