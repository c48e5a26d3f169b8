"""membership_metrics against scikit-learn's ROC, and LiRA's reading of TPR at low FPR."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from instahide_ops.audits.membership.metrics import FPRS, ROC_POINTS, membership_metrics
from instahide_ops.errors import InvalidInputError


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_advantage_match_sklearn(seed, tied):
    rng = np.random.default_rng(seed)
    member = rng.random(500) < 0.4
    scores = rng.normal(member * 0.5, 1.0)
    if tied:
        scores = np.round(scores)  # a handful of distinct scores, most examples tied
    metrics = membership_metrics(scores, member)
    fpr, tpr, _ = roc_curve(member, scores)
    assert metrics.auc == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    assert metrics.advantage == pytest.approx(np.abs(tpr - fpr).max(), abs=1e-12)
    for target in FPRS[:2]:  # 300 non-members: 1 % and 10 % estimable
        assert metrics.tpr_at_fpr[target] == pytest.approx(tpr[fpr <= target].max())
    assert (metrics.members, metrics.non_members) == (member.sum(), (~member).sum())


def test_curve_is_sklearns_with_every_point():
    rng = np.random.default_rng(3)
    member = rng.random(300) < 0.5
    scores = np.round(rng.normal(member, 1.0), 1)
    metrics = membership_metrics(scores, member)
    fpr, tpr, _ = roc_curve(member, scores, drop_intermediate=False)
    np.testing.assert_allclose(metrics.fpr, fpr)
    np.testing.assert_allclose(metrics.tpr, tpr)


def test_tpr_at_fpr_by_hand():
    # non-members 0..99 score 0..99; members score 50.5, 98.5, 200: a threshold above 99 lets no non-member
    # through and catches one member of three; above 98 lets 1 % through and catches two
    scores = np.r_[np.arange(100.0), 50.5, 98.5, 200.0]
    member = np.r_[np.zeros(100, bool), True, True, True]
    metrics = membership_metrics(scores, member)
    assert metrics.tpr_at_fpr[0.01] == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr[0.1] == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr[0.001] is None and metrics.tpr_at_fpr[0.00001] is None
    assert metrics.to_dict()["tpr_at_fpr"] == {"0.1": pytest.approx(2 / 3), "0.01": pytest.approx(2 / 3),
                                               "0.001": None, "1e-05": None}


def test_not_estimable_below_one_over_fpr_non_members():
    member = np.r_[np.zeros(99, bool), np.ones(5, bool)]
    assert membership_metrics(np.arange(104.0), member).tpr_at_fpr[0.01] is None
    member = np.r_[np.zeros(100, bool), np.ones(5, bool)]
    assert membership_metrics(np.arange(105.0), member).tpr_at_fpr[0.01] == 1.0


def test_a_long_curve_is_thinned_keeping_its_ends_and_its_low_fpr_end():
    rng = np.random.default_rng(4)
    member = rng.random(20_000) < 0.5
    metrics = membership_metrics(rng.normal(member, 1.0), member)
    assert len(metrics.fpr) <= ROC_POINTS + 2
    assert (metrics.fpr[0], metrics.tpr[0], metrics.fpr[-1], metrics.tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(metrics.fpr) >= 0)
    assert (metrics.fpr[1:] < 1e-3).sum() >= 10  # the log-log plot's low end keeps points


@pytest.mark.parametrize(("scores", "member", "field"), [
    (np.array([0.1, np.nan, 0.3]), np.array([True, False, True]), "scores"),
    (np.array([0.1, 0.2]), np.array([True, False, True]), "scores"),
    (np.array([0.1, 0.2, 0.3]), np.array([True, True, True]), "member"),
])
def test_bad_inputs_name_their_field(scores, member, field):
    with pytest.raises(InvalidInputError) as error:
        membership_metrics(scores, member)
    assert error.value.field == field
