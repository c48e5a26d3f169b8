"""instahide_ops.audits.reconstruction.instahide.similarity and .clustering on a small challenge-shaped set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide_ops.audits.reconstruction.instahide.clustering import (
    class_image_counts,
    cluster_by_class,
    coefficients_from_labels,
    label_classes,
)
from instahide_ops.audits.reconstruction.instahide.similarity import class_sets, highpass_features, similarity_matrix
from instahide_ops.transforms.instahide.challenge import build_challenge, bundled_private_images, challenge_public_pool

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
    def test_class_counts_read_from_the_label_mass_match_the_private_set(self, small_set):
        challenge, truth = small_set
        counts = class_image_counts(torch.from_numpy(challenge.labels), IMAGES).numpy()
        true_counts = np.bincount(truth.private_labels, minlength=counts.size)
        # 20 encodings per image leave the mass a little noisy: within one image per class (exact at 100 × 50).
        assert counts.sum() == IMAGES and np.abs(counts - true_counts).max() <= 1
        assert (counts == true_counts).mean() >= 0.7, (counts, true_counts)

    def test_class_counts_sum_to_the_images_and_every_named_class_gets_one(self):
        labels = torch.tensor([[0.50, 0.00, 0.01, 0.0], [0.45, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, 0.0]])
        counts = class_image_counts(labels, 5)
        assert counts.tolist() == [3, 1, 1, 0]
        assert class_image_counts(labels, 2).tolist() == [1, 1, 1, 0]  # three classes named: one image each
        assert class_image_counts(torch.zeros(2, 3), 4).tolist() == [0, 0, 0]

    def test_label_classes_heavier_first_and_one_class_means_both(self):
        labels = torch.tensor([[0.1, 0.0, 0.3], [0.0, 0.4, 0.0]])
        assert label_classes(labels).tolist() == [[2, 0], [1, 1]]

    def test_most_encodings_get_the_clusters_of_both_their_private_images(self, small_set):
        challenge, truth = small_set
        labels = torch.from_numpy(challenge.labels)
        similarity = similarity_matrix(highpass_features(torch.from_numpy(challenge.encryption)), class_sets(labels))
        clustering = cluster_by_class(similarity, labels, IMAGES, neighbours=PER_IMAGE)
        members = clustering.members.numpy()
        assert len(clustering.cluster_classes) == IMAGES
        majority = np.array([np.bincount(truth.pair_indices[(members == c).any(1)].ravel(), minlength=IMAGES).argmax()
                             for c in range(IMAGES)])
        # Each cluster's class is its majority image's class.
        assert (clustering.cluster_classes.numpy() == truth.private_labels[majority]).mean() > 0.9
        both_right = np.mean(np.sort(majority[members], axis=1) == np.sort(truth.pair_indices, axis=1), axis=1) == 1
        assert both_right.mean() > 0.5, both_right.mean()
        assert len(set(majority.tolist())) >= 0.8 * IMAGES
        again = cluster_by_class(similarity, labels, IMAGES, neighbours=PER_IMAGE)
        assert torch.equal(again.members, clustering.members)  # seeded: an audit is reproducible

    def test_each_member_is_a_cluster_of_the_class_its_label_names(self, small_set):
        challenge, _ = small_set
        labels = torch.from_numpy(challenge.labels)
        similarity = similarity_matrix(highpass_features(torch.from_numpy(challenge.encryption)), class_sets(labels))
        clustering = cluster_by_class(similarity, labels, IMAGES, neighbours=PER_IMAGE)
        assert torch.equal(clustering.cluster_classes[clustering.members], label_classes(labels))

    def test_similarity_of_the_wrong_size_is_refused(self):
        with pytest.raises(ValueError, match="similarity"):
            cluster_by_class(torch.zeros(3, 3), torch.ones(4, 2), 2, neighbours=2)

    def test_coefficients_come_from_the_labels(self):
        labels = torch.tensor([[0.4, 0.0, 0.2], [0.0, 0.6, 0.0]])
        members = torch.tensor([[0, 1], [1, 2]])
        cluster_classes = torch.tensor([0, 2, 1])
        weights = coefficients_from_labels(labels, members, cluster_classes)
        torch.testing.assert_close(weights, torch.tensor([[0.4, 0.2], [0.0, 0.6]]))
        same = coefficients_from_labels(labels, torch.tensor([[2, 2], [2, 2]]), cluster_classes)
        torch.testing.assert_close(same[1], torch.tensor([0.3, 0.3]))
