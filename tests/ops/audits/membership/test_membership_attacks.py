"""Every membership attack: the contract, what each threshold ranks first, that the set's leakage is found
(LiRA first at low FPR), that trained attacks score out-of-fold, and which attacks an audit chooses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from instahide_ops.audits.membership import (
    MEMBERSHIP_ATTACKS,
    MembershipData,
    MembershipView,
    choose_membership_attacks,
    get_membership_attack,
    learned,
    membership_metrics,
    reference,
    thresholds,
)
from instahide_ops.audits.progress import AttackCancelled, CancelToken
from instahide_ops.errors import InvalidInputError

OURS = (thresholds, learned, reference)  # segmentation's CNN attacks are tested with their module
CLASSIFICATION = [a.name for a in MEMBERSHIP_ATTACKS if "classification" in a.tasks]
SEGMENTATION = [a.name for a in MEMBERSHIP_ATTACKS if "segmentation" in a.tasks
                and type(a).__module__ in {m.__name__ for m in OURS}]


def run(name: str, data: MembershipData, seed: int | None = 0) -> np.ndarray:
    return get_membership_attack(name).run(MembershipView(data, seed)).scores


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_every_attack_finds_the_overfit_sets_members(name, overfit):
    result = get_membership_attack(name).run(MembershipView(overfit, 0))
    assert result.scores.shape == (overfit.examples,) and result.scores.dtype == np.float64
    assert np.isfinite(result.scores).all() and result.seconds >= 0
    assert membership_metrics(result.scores, overfit.is_member).auc > 0.6


@pytest.mark.parametrize("name", SEGMENTATION)
def test_every_attack_finds_the_members_of_a_segmentation_set(name, overfit_segmentation):
    scores = run(name, overfit_segmentation)
    assert scores.shape == (overfit_segmentation.examples,) and np.isfinite(scores).all()
    assert roc_auc_score(overfit_segmentation.is_member, scores) > 0.6


def test_reference_attacks_beat_the_loss_at_low_fpr(overfit):
    tpr = {name: membership_metrics(run(name, overfit), overfit.is_member).tpr_at_fpr[0.01]
           for name in ("loss", "lira_online", "lira_offline", "rmia")}
    assert tpr["lira_online"] >= tpr["lira_offline"] >= 5 * tpr["loss"]
    assert tpr["rmia"] >= 5 * tpr["loss"]


def test_lira_fits_the_reference_gaussians():
    # example 0 scores 1 under IN models and -1 under OUT ones (noise 0.1); the target's 0.9 is IN-like,
    # example 1's -0.9 OUT-like, though both sit at the same distance from the global mean
    rng = np.random.default_rng(0)
    inside = np.tile([[True], [False]], (4, 3))  # models 0, 2, 4, 6 trained on every example
    references = np.where(inside, 1.0, -1.0) + rng.normal(0, 0.1, inside.shape)
    references[:, 2] += 5  # an easy example: its scores are all high
    target = np.array([0.9, -0.9, 4.1])
    online = reference.lira_scores(target, references, inside, online=True)
    offline = reference.lira_scores(target, references, inside, online=False)
    assert online[0] > 0 > online[1] and offline[0] > offline[1]
    assert online[2] < 0  # 4.1 is OUT-like for an example whose OUT scores sit near 4


def test_lira_without_in_references_shifts_the_out_fit():
    inside = np.array([[True, False], [False, False], [True, False]])
    references = np.array([[2.0, 0.1], [0.0, -0.1], [2.2, 0.0]])
    scores = reference.lira_scores(np.array([2.0, 2.0]), references, inside, online=True)
    assert np.isfinite(scores).all() and scores[1] > 0  # example 1's IN mean: its OUT mean + the average gap


def test_rmia_scores_the_share_of_population_points_dominated():
    log_target = np.log([0.9, 0.5, 0.2, 0.6])
    references = np.log(np.full((2, 4), 0.5))
    inside = np.zeros((2, 4), bool)
    scores = reference.rmia_scores(log_target, references, inside, a=1.0)  # a = 1: Pr(x) = Pr_OUT(x)
    np.testing.assert_allclose(scores, [3 / 3, 1 / 3, 0 / 3, 2 / 3])
    assert (reference.rmia_scores(log_target, references, inside, gamma=1.7) <= scores).all()


def threshold_set() -> MembershipData:
    # A confident and right, B right, C unsure, D confident and wrong; all labelled 0
    probabilities = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33], [0.05, 0.9, 0.05]])
    return MembershipData(probabilities, np.zeros(4, np.int64), np.array([1, 1, 0, 0], bool))


@pytest.mark.parametrize(("name", "ranks"), [  # each example's rank, A to D, most member-like 0
    ("loss", [0, 1, 2, 3]),
    ("confidence", [0, 1, 2, 0]),  # A and D alike: the top posterior knows no label
    ("entropy", [0, 1, 2, 0]),
    ("modified_entropy", [0, 1, 2, 3]),  # the label sets D apart
])
def test_threshold_attacks_rank_the_hand_made_set(name, ranks):
    scores = run(name, threshold_set())
    np.testing.assert_array_equal(np.unique(-scores.round(12), return_inverse=True)[1], ranks)


def test_threshold_attacks_read_segmentation_on_counted_pixels():
    probabilities = np.zeros((4, 2, 1, 2))
    probabilities[:, 0] = [[[0.9, 0.5]], [[0.8, 0.01]], [[0.7, 0.99]], [[0.6, 0.5]]]
    probabilities[:, 1] = 1 - probabilities[:, 0]
    labels = np.array([[[0, 255]]] * 4)  # the second pixel counts nowhere
    data = MembershipData(probabilities.astype(np.float32), labels, np.array([1, 1, 0, 0], bool))
    np.testing.assert_allclose(run("loss", data), np.log([0.9, 0.8, 0.7, 0.6]), rtol=1e-6)


@pytest.mark.parametrize("name", ["logistic_regression", "mlp"])
def test_trained_attacks_never_score_an_example_they_saw(name, monkeypatch):
    # a 1-nearest-neighbour "attack model" memorises its training set: scoring an example it trained on would give
    # that example its own membership back (AUC 1); out-of-fold, on outputs that carry no signal, it is chance
    rng = np.random.default_rng(5)
    data = MembershipData(rng.normal(size=(400, 10)), rng.integers(0, 10, 400), rng.random(400) < 0.5)
    monkeypatch.setattr(type(get_membership_attack(name)), "make_classifier",
                        lambda self, seed: KNeighborsClassifier(n_neighbors=1))
    memoriser = KNeighborsClassifier(n_neighbors=1).fit(learned.attack_features(data), data.is_member)
    in_sample = memoriser.predict_proba(learned.attack_features(data))[:, 1]
    assert roc_auc_score(data.is_member, in_sample) == 1.0
    assert abs(roc_auc_score(data.is_member, run(name, data)) - 0.5) < 0.1


def test_folds_are_disjoint_and_cover_every_example_once():
    fitted, scored = [], []

    class Recording:
        classes_ = np.array([False, True])

        def fit(self, features, member):
            fitted.append(set(features[:, 0].astype(int)))
            return self

        def predict_proba(self, features):
            scored.append(set(features[:, 0].astype(int)))
            return np.full((len(features), 2), 0.5)

    member = np.arange(50) % 3 == 0
    learned.out_of_fold_scores(np.arange(50.0)[:, None], member, lambda seed: Recording(), seed=0)
    assert len(fitted) == learned.FOLDS
    for train, held_out in zip(fitted, scored, strict=True):
        assert not train & held_out and train | held_out == set(range(50))
    assert sorted(i for fold in scored for i in fold) == list(range(50))


def test_trained_attacks_are_reproducible_with_a_seed(overfit):
    small = dataclasses.replace(overfit, outputs=overfit.outputs[:300], labels=overfit.labels[:300],
                                member=overfit.member[:300], reference_outputs=None, reference_member=None)
    np.testing.assert_array_equal(run("mlp", small, seed=3), run("mlp", small, seed=3))


@pytest.mark.parametrize("name", ["mlp", "lira_online"])
def test_a_cancelled_attack_stops(name, overfit):
    token = CancelToken()
    token.cancel()
    with pytest.raises(AttackCancelled):
        get_membership_attack(name).run(MembershipView(overfit, 0), cancel=token)


def test_defaults_leave_reference_attacks_out_without_references(overfit):
    without = dataclasses.replace(overfit, reference_outputs=None, reference_member=None)
    names = [a.name for a in choose_membership_attacks(without)]
    assert names == ["loss", "confidence", "entropy", "modified_entropy", "logistic_regression", "mlp"]
    assert {"lira_online", "lira_offline", "rmia"} <= {a.name for a in choose_membership_attacks(overfit)}
    for asked in ({"attacks": ["lira_online"]}, {"extra": ["rmia"]}):
        with pytest.raises(InvalidInputError, match="reference") as error:
            choose_membership_attacks(without, **asked)
        assert error.value.field == "attacks"


@pytest.mark.parametrize("asked", [
    {"attacks": ["no_such_attack"]},
    {"attacks": ["loss"], "skipped": ["mlp"]},
    {"skipped": [a.name for a in MEMBERSHIP_ATTACKS]},
])
def test_choosing_refuses_what_cannot_run(asked, overfit):
    with pytest.raises(InvalidInputError) as error:
        choose_membership_attacks(overfit, **asked)
    assert error.value.field == "attacks"


def test_choosing_keeps_registry_order(overfit):
    chosen = choose_membership_attacks(overfit, ["rmia", "loss"])
    assert [a.name for a in chosen] == ["loss", "rmia"]
    assert [a.name for a in choose_membership_attacks(overfit, skipped=["mlp"], extra=[])] == [
        a.name for a in MEMBERSHIP_ATTACKS if a.name != "mlp" and a.default and overfit.task in a.tasks]
