"""audit_membership end to end: the report, its slices and picture, defenses re-audited, progress and cancel."""

from __future__ import annotations

import dataclasses
import json
import threading

import cv2
import numpy as np
import pytest
from membership_sets import overfit_set

from instahide_ops.audits.membership import MembershipData, audit_membership, membership_metrics
from instahide_ops.audits.progress import AttackCancelled, CancelToken
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.defenses import parse_defense


@pytest.fixture(scope="module")
def audit_set() -> MembershipData:
    return overfit_set(600, classes=4, references=4, seed=1)


def test_report_of_an_audit_with_references_and_defenses(audit_set):
    stages: list[tuple[str, float, float]] = []
    defenses = [parse_defense("argmax"), parse_defense("gauss:0.1")]
    report = audit_membership(audit_set, defenses=defenses, seed=0, progress=lambda *a: stages.append(a))
    names = ["loss", "confidence", "entropy", "modified_entropy", "logistic_regression", "mlp", "lira_online",
             "lira_offline", "rmia"]
    assert list(report.attacks) == names
    assert (report.task, report.examples, report.references) == ("classification", 600, 4)
    assert report.members == int(audit_set.is_member.sum())
    assert report.utility_name == "accuracy"
    assert report.utility == pytest.approx(np.mean(audit_set.outputs.argmax(1) == audit_set.labels))
    assert report.strongest().attack.name in {"lira_online", "lira_offline", "rmia"}
    assert report.device == "cpu" and report.seconds > 0

    lira = report.attacks["lira_online"]
    assert lira.scores.shape == (600,) and lira.metrics.auc > 0.9 and lira.seconds >= 0
    classes = [f"class={c}" for c in range(4)]
    assert set(lira.slices) == {*classes, "correct", "incorrect"}
    correct = audit_set.outputs.argmax(1) == audit_set.labels
    wheres = {**{f"class={c}": audit_set.labels == c for c in range(4)}, "correct": correct, "incorrect": ~correct}
    for name, where in wheres.items():  # a slice is the attack measured on those examples only
        expected = membership_metrics(lira.scores[where], audit_set.is_member[where])
        assert lira.slices[name].auc == expected.auc
        assert lira.slices[name].tpr_at_fpr == expected.tpr_at_fpr

    assert [d.defense for d in report.defenses] == defenses
    argmax = report.defenses[0]
    assert argmax.utility == pytest.approx(report.utility)  # the top class is what argmax keeps
    assert argmax.attacks["loss"].metrics.auc < report.attacks["loss"].metrics.auc
    assert list(argmax.attacks) == names

    picture = cv2.imdecode(np.frombuffer(report.roc_png, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (300, 960, 3)

    stage_names = list(dict.fromkeys(stage for stage, _, _ in stages))
    assert stage_names == [*names, "defense:argmax", "defense:gauss:0.1", "scoring"]
    overall = [fraction for _, _, fraction in stages]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)

    summary = json.loads(json.dumps(report.summary()))
    assert summary["strongest"] == report.strongest().attack.name
    assert summary["attacks"]["loss"]["tpr_at_fpr"]["0.01"] == report.attacks["loss"].metrics.tpr_at_fpr[0.01]
    assert summary["defenses"][1]["defense"] == "gauss:0.1"


def test_a_slice_without_both_sides_has_no_metrics():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20, np.int64), np.ones(3, np.int64)]
    member = np.r_[rng.random(20) < 0.5, [True, True, True]]  # class 1: members only
    member[:2] = [True, False]
    report = audit_membership(MembershipData(rng.normal(size=(23, 2)), labels, member), attacks=["loss"])
    assert report.attacks["loss"].slices["class=1"] is None
    assert report.attacks["loss"].slices["class=0"] is not None


def test_segmentation_audit(overfit_segmentation):
    report = audit_membership(overfit_segmentation, attacks=["loss", "lira_online"],
                              defenses=[parse_defense("argmax")], seed=0)
    assert report.task == "segmentation" and report.utility_name == "miou"
    assert set(report.attacks["loss"].slices) == {"correct", "incorrect"}
    assert report.attacks["lira_online"].metrics.auc > report.attacks["loss"].metrics.auc
    assert report.defenses[0].utility_name == "miou"


def test_bad_data_is_refused_before_any_attack(audit_set):
    with pytest.raises(InvalidInputError) as error:
        audit_membership(dataclasses.replace(audit_set, member=audit_set.member[:-1]))
    assert error.value.field == "member"


def test_cancel_stops_the_audit(audit_set):
    token = CancelToken()
    seen: list[str] = []

    def progress(stage: str, fraction: float, overall: float) -> None:
        seen.append(stage)
        if stage == "logistic_regression":
            token.cancel()

    with pytest.raises(AttackCancelled):
        audit_membership(audit_set, progress=progress, cancel=token)
    assert "mlp" not in seen


def test_cancel_from_another_thread_stops_a_running_attack(audit_set):
    token = CancelToken()
    timer = threading.Timer(0.05, token.cancel)
    timer.start()
    with pytest.raises(AttackCancelled):
        audit_membership(audit_set, attacks=["mlp"], defenses=[parse_defense("gauss:0.1")] * 20, cancel=token)
    timer.join()
