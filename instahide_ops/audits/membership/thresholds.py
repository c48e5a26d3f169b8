"""Threshold attacks: one statistic of the outputs an example, no training, no reference models.

A model fits its training examples better than others, so a member's loss is lower (Yeom et al. 2018, "Privacy
Risk in Machine Learning"), its top posterior higher and its posterior less spread out (Salem et al. 2019,
"ML-Leaks"), and its modified entropy lower (Song & Mittal 2021, "Systematic Evaluation of Privacy Risks of
Machine Learning Models"). Each statistic is the score; the audit sweeps every threshold (the ROC), which is what
these papers' best-threshold attacks choose from. Segmentation: each statistic's mean over an example's
non-ignored pixels. ``confidence`` is the label-free top posterior: the label's own probability would rank
classification examples exactly as ``loss`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from instahide_ops.audits.membership import statistics
from instahide_ops.audits.membership.attack import MembershipResult, MembershipView, register_membership_attack
from instahide_ops.audits.membership.data import TASKS
from instahide_ops.audits.progress import CancelToken


class ThresholdAttack:
    """A statistic of (log-probabilities, labels) as the membership score; subclasses name the statistic."""

    tasks: ClassVar[frozenset[str]] = frozenset(TASKS)
    needs_references: ClassVar[bool] = False
    default: ClassVar[bool] = True
    statistic: ClassVar[Callable[..., np.ndarray]]

    def run(self, view: MembershipView, *, cancel: CancelToken | None = None) -> MembershipResult:
        start = time.perf_counter()
        (cancel or CancelToken()).raise_if_cancelled()
        data = view.data
        scores = type(self).statistic(data.log_probabilities(), np.asarray(data.labels),
                                      ignore_index=data.ignore_index)
        return MembershipResult(scores, time.perf_counter() - start)


@register_membership_attack
class LossAttack(ThresholdAttack):
    name = "loss"
    title = "loss threshold"
    threat = "thresholds each example's cross-entropy loss on its label (Yeom et al. 2018)"
    statistic = staticmethod(statistics.label_log_probability)


@register_membership_attack
class ConfidenceAttack(ThresholdAttack):
    name = "confidence"
    title = "confidence threshold"
    threat = "thresholds the model's top posterior, without the label (Salem et al. 2019)"
    statistic = staticmethod(statistics.max_probability)


@register_membership_attack
class EntropyAttack(ThresholdAttack):
    name = "entropy"
    title = "entropy threshold"
    threat = "thresholds the entropy of the posterior, without the label (Salem et al. 2019)"
    statistic = staticmethod(statistics.negative_entropy)


@register_membership_attack
class ModifiedEntropyAttack(ThresholdAttack):
    name = "modified_entropy"
    title = "modified entropy threshold"
    threat = "thresholds the posterior's modified entropy given the label (Song & Mittal 2021)"
    statistic = staticmethod(statistics.negative_modified_entropy)
