"""MembershipData: what it reads as probabilities, and which field a bad upload is blamed on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from instahide_ops.audits.membership import MembershipData
from instahide_ops.errors import InvalidInputError


def small(**changes) -> MembershipData:
    rng = np.random.default_rng(0)
    data = MembershipData(outputs=rng.normal(size=(6, 3)), labels=np.array([0, 1, 2, 0, 1, 2]),
                          member=np.array([1, 1, 1, 0, 0, 0], bool), reference_outputs=rng.normal(size=(2, 6, 3)),
                          reference_member=rng.random((2, 6)) < 0.5)
    return dataclasses.replace(data, **changes)


def test_logits_become_softmax_and_probabilities_stay():
    data = small()
    data.check()
    expected = np.exp(data.outputs) / np.exp(data.outputs).sum(1, keepdims=True)
    np.testing.assert_allclose(data.probabilities(), expected)
    np.testing.assert_allclose(data.log_probabilities(), np.log(expected))
    released = small(outputs=expected)
    assert released.task == "classification"
    np.testing.assert_array_equal(released.probabilities(), expected)  # "auto": rows of >= 0 summing to 1
    assert small(outputs=expected, outputs_are="logits").probabilities() == pytest.approx(
        np.exp(expected) / np.exp(expected).sum(1, keepdims=True))
    assert data.reference_probabilities().shape == (2, 6, 3)


def test_extreme_logits_keep_the_label_margin():
    # p_y rounds to 1 in float64 here; the log-softmax keeps log p of the others exact
    data = small(outputs=np.tile([[60.0, 0.0, 0.0]], (6, 1)))
    assert data.log_probabilities()[0, 1] == pytest.approx(-60.0)


def test_segmentation_is_read_from_the_shape():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (4, 5, 5))
    labels[:, 0, 0] = 255
    data = MembershipData(rng.normal(size=(4, 3, 5, 5)), labels, np.array([1, 1, 0, 0], bool))
    data.check()
    assert data.task == "segmentation" and data.probabilities().dtype == np.float32
    np.testing.assert_allclose(data.probabilities().sum(1), 1, atol=1e-6)


@pytest.mark.parametrize(("changes", "field"), [
    ({"outputs": np.zeros((6,))}, "outputs"),
    ({"outputs": np.zeros((3, 3))}, "outputs"),
    ({"outputs": np.zeros((6, 1))}, "outputs"),
    ({"outputs": np.full((6, 3), np.nan)}, "outputs"),
    ({"outputs": np.full((6, 3), "a")}, "outputs"),
    ({"outputs": -np.ones((6, 3)), "outputs_are": "probabilities"}, "outputs"),
    ({"outputs_are": "posteriors"}, "outputs_are"),
    ({"labels": np.array([0, 1, 2, 0, 1, 3])}, "labels"),
    ({"labels": np.array([0, 1, 2, 0, 1, -1])}, "labels"),
    ({"labels": np.zeros(5, np.int64)}, "labels"),
    ({"labels": np.zeros(6)}, "labels"),
    ({"member": np.array([1, 0, 0, 0, 0, 0], bool)}, "member"),
    ({"member": np.array([1, 1, 1, 0, 0])}, "member"),
    ({"member": np.array([2, 1, 1, 0, 0, 0])}, "member"),
    ({"reference_outputs": None}, "reference_outputs"),
    ({"reference_outputs": np.zeros((2, 5, 3))}, "reference_outputs"),
    ({"reference_outputs": np.full((2, 6, 3), np.inf)}, "reference_outputs"),
    ({"reference_member": None}, "reference_member"),
    ({"reference_member": np.zeros((3, 6), bool)}, "reference_member"),
])
def test_bad_inputs_name_their_field(changes, field):
    with pytest.raises(InvalidInputError) as error:
        small(**changes).check()
    assert error.value.field == field


def test_segmentation_bad_inputs_name_their_field():
    rng = np.random.default_rng(2)
    outputs, member = rng.normal(size=(4, 3, 2, 2)), np.array([1, 1, 0, 0], bool)
    labels = rng.integers(0, 3, (4, 2, 2))
    with pytest.raises(InvalidInputError) as error:
        MembershipData(outputs, labels, member, ignore_index=1).check()
    assert error.value.field == "ignore_index"
    labels[0] = 255
    with pytest.raises(InvalidInputError) as error:  # an example with nothing left to score
        MembershipData(outputs, labels, member).check()
    assert error.value.field == "labels"
