"""instahide_ops.attacks.similarity and .clustering on a small challenge-shaped set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide_ops.attacks.clustering import assign_clusters, coefficients_from_labels, seed_profiles
from instahide_ops.attacks.similarity import class_sets, highpass_features, similarity_matrix
from instahide_ops.challenge import build_challenge, bundled_private_images, challenge_public_pool

IMAGES, PER_IMAGE = 24, 20


@pytest.fixture(scope="module")
def small_set():
    privates, classes = bundled_private_images(IMAGES)
    return build_challenge(privates, classes, encodings_per_image=PER_IMAGE, seed=11, pool=challenge_public_pool())


def shares_private(pairs: np.ndarray) -> np.ndarray:
    member = np.zeros((len(pairs), pairs.max() + 1), np.float32)
    member[np.arange(len(pairs))[:, None], pairs] = 1
    share = member @ member.T > 0
    np.fill_diagonal(share, False)
    return share


class TestSimilarity:
    def test_features_are_unit_rows(self, small_set):
        challenge, _ = small_set
        features = highpass_features(torch.from_numpy(challenge.encryption))
        assert features.shape == (IMAGES * PER_IMAGE, 32 * 32 * 3)
        torch.testing.assert_close(features.norm(dim=1), torch.ones(len(features)))

    def test_nearest_neighbours_share_a_private_image_far_above_chance(self, small_set):
        challenge, truth = small_set
        features = highpass_features(torch.from_numpy(challenge.encryption))
        similarity = similarity_matrix(features, class_sets(torch.from_numpy(challenge.labels)))
        share = shares_private(truth.pair_indices)
        top = similarity.topk(10, dim=1).indices.numpy()
        precision = share[np.arange(len(share))[:, None], top].mean()
        assert precision > 0.7, precision  # chance: about 4 / IMAGES
        assert share.mean() < 0.2

    def test_label_pruning_and_diagonal(self):
        features = torch.nn.functional.normalize(torch.randn(4, 12), dim=1)
        labels = torch.tensor([[0.5, 0.0], [0.3, 0.0], [0.0, 0.4], [0.2, 0.3]])
        similarity = similarity_matrix(features, class_sets(labels), chunk=3)
        assert float(similarity[0, 2]) == -1.0 and float(similarity[0, 0]) == -1.0
        torch.testing.assert_close(similarity[0, 1], features[0] @ features[1])
        torch.testing.assert_close(similarity[2, 3], features[2] @ features[3])

    def test_bad_shapes(self):
        with pytest.raises(ValueError, match=r"\(E, H, W, C\)"):
            highpass_features(torch.zeros(3, 32, 32))
        with pytest.raises(ValueError, match="label rows"):
            similarity_matrix(torch.zeros(3, 5), torch.zeros(2, 10, dtype=torch.bool))


class TestClustering:
    def test_most_encodings_get_a_cluster_of_one_of_their_private_images(self, small_set):
        challenge, truth = small_set
        labels = torch.from_numpy(challenge.labels)
        features = highpass_features(torch.from_numpy(challenge.encryption))
        classes = class_sets(labels)
        profiles, cluster_classes = seed_profiles(features, similarity_matrix(features, classes), classes, IMAGES)
        clustering = assign_clusters(features, profiles, cluster_classes, classes)
        members = clustering.members.numpy()
        majority = [np.bincount(truth.pair_indices[(members == c).any(1)].ravel(), minlength=IMAGES).argmax()
                    for c in range(len(profiles))]
        first_right = np.mean([majority[m] in pair for m, pair in zip(members[:, 0], truth.pair_indices, strict=True)])
        assert first_right > 0.7, first_right
        assert len(set(majority)) >= 0.7 * IMAGES

    def test_coefficients_come_from_the_labels(self):
        labels = torch.tensor([[0.4, 0.0, 0.2], [0.0, 0.6, 0.0]])
        members = torch.tensor([[0, 1], [1, 2]])
        cluster_classes = torch.tensor([0, 2, 1])
        weights = coefficients_from_labels(labels, members, cluster_classes)
        torch.testing.assert_close(weights, torch.tensor([[0.4, 0.2], [0.0, 0.6]]))
        same = coefficients_from_labels(labels, torch.tensor([[2, 2], [2, 2]]), cluster_classes)
        torch.testing.assert_close(same[1], torch.tensor([0.3, 0.3]))
