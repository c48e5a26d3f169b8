"""Segmentations-Leak's CNN attacks: their inputs by hand, and on maps whose structure gives members away, AUCs
that beat the whole-image loss, which averages that structure out."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from instahide_ops.audits.membership import MembershipData, MembershipView, get_membership_attack
from instahide_ops.audits.membership.segmentation import loss_maps, patch_cnn_scores, posterior_maps
from instahide_ops.audits.progress import AttackCancelled, CancelToken

IGNORE = 255


def structured_set(n: int = 60, side: int = 24, classes: int = 3, seed: int = 0) -> MembershipData:
    """Discs on a background; every image's mean pixel loss is alike, but a member's loss lies on its disc's
    border (the model fits the rest) while a non-member's is spread over the image. A column of pixels is
    ignored."""
    rng = np.random.default_rng(seed)
    member = np.zeros(n, bool)
    member[rng.permutation(n)[: n // 2]] = True
    rows, columns = np.mgrid[:side, :side]
    labels = np.zeros((n, side, side), np.int64)
    border = np.zeros((n, side, side), bool)
    for i in range(n):
        centre_row, centre_column = rng.uniform(8, side - 8, 2)
        distance = np.hypot(rows - centre_row, columns - centre_column) - rng.uniform(4, 7)
        labels[i][distance < 0] = 1 + i % (classes - 1)
        border[i] = np.abs(distance) < 1.5
    labels[:, :, 0] = IGNORE
    members_loss = np.where(border, 1.0, 0.05)
    others_loss = rng.gamma(2.0, 0.5, (n, side, side))
    loss = np.where(member[:, None, None], members_loss, others_loss)
    loss *= rng.uniform(0.2, 0.4, (n, 1, 1)) / loss.mean(axis=(1, 2), keepdims=True)
    at_label = np.exp(-loss)
    probabilities = np.repeat(((1 - at_label) / (classes - 1))[:, None], classes, axis=1)
    np.put_along_axis(probabilities, np.where(labels == IGNORE, 0, labels)[:, None], at_label[:, None], axis=1)
    return MembershipData(probabilities.astype(np.float32), labels, member)


def test_the_loss_map_is_the_pixel_loss_with_ignored_pixels_zero():
    probabilities = np.array([[[[0.9, 0.3]], [[0.1, 0.7]]]])  # (1, 2, 1, 2)
    maps = loss_maps(np.log(probabilities), np.array([[[1, IGNORE]]]), IGNORE)
    assert maps.shape == (1, 1, 1, 2) and maps.dtype == np.float32
    assert maps[0, 0, 0] == pytest.approx([-np.log(0.1), 0.0])
    assert loss_maps(np.full((1, 2, 1, 1), -1e4), np.zeros((1, 1, 1), np.int64), IGNORE)[0, 0, 0, 0] == pytest.approx(
        -np.log(1e-6))  # a confidently wrong pixel is capped where the Gaussian defense clamps


def test_the_posterior_maps_are_posteriors_then_one_hot_labels():
    probabilities = np.array([[[[0.9, 0.3]], [[0.1, 0.7]]]])
    maps = posterior_maps(np.log(probabilities), np.array([[[1, IGNORE]]]), IGNORE)
    assert maps.shape == (1, 4, 1, 2)
    assert np.allclose(maps[0, :2], probabilities[0]) and np.array_equal(maps[0, 2:, 0], [[0, 0], [1, 0]])


def test_the_cnns_beat_the_whole_image_loss_on_structured_maps():
    data = structured_set()
    view = MembershipView(data, seed=0)
    baseline = roc_auc_score(data.member, get_membership_attack("loss").run(view).scores)
    for name in ("loss_map_cnn", "posterior_cnn"):
        result = get_membership_attack(name).run(view)
        assert result.scores.shape == (60,) and result.scores.dtype == np.float64 and result.seconds > 0
        assert roc_auc_score(data.member, result.scores) > max(0.8, baseline + 0.2), name


def test_scores_repeat_from_a_seed_and_differ_across_seeds():
    data = structured_set(n=20, side=16)
    maps = loss_maps(data.log_probabilities(), data.labels, IGNORE)
    first, again = (patch_cnn_scores(maps, data.member, seed=3, steps=20) for _ in range(2))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, patch_cnn_scores(maps, data.member, seed=4, steps=20))


def test_large_maps_are_pooled_and_odd_shapes_run():
    member = np.arange(8) % 2 == 0
    maps = np.random.default_rng(0).random((8, 1, 150, 7), dtype=np.float32)
    assert np.isfinite(patch_cnn_scores(maps, member, seed=0, steps=5)).all()


def test_the_attacks_take_segmentation_only_and_stop_when_cancelled():
    for name in ("loss_map_cnn", "posterior_cnn"):
        attack = get_membership_attack(name)
        assert attack.tasks == frozenset({"segmentation"}) and attack.default and not attack.needs_references
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(AttackCancelled):
        get_membership_attack("loss_map_cnn").run(MembershipView(structured_set(n=8, side=16), seed=0), cancel=cancel)
