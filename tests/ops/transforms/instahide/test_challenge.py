"""instahide_ops.transforms.instahide.challenge: challenge-shaped sets, their files and their ground truth."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from instahide_ops.errors import InvalidInputError
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.instahide.challenge import (
    GROUND_TRUTH_FILE,
    PRIVATE_SOURCE_NAMES,
    PUBLIC_SOURCE_NAMES,
    build_challenge,
    bundled_private_images,
    challenge_public_pool,
    load_challenge,
    load_ground_truth,
    load_private_images,
    save_challenge,
)
from instahide_ops.transforms.instahide.pool import PublicPool, build_pool


@pytest.fixture(scope="module")
def small_set():
    images, labels = bundled_private_images(12)
    challenge, truth = build_challenge(images, labels, encodings_per_image=5, pool=SMALL_POOL, seed=3)
    return images, labels, challenge, truth


SMALL_POOL = PublicPool.from_array(np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))


class TestBundledPrivateImages:
    def test_shapes_classes_and_determinism(self):
        images, labels = bundled_private_images(30, seed=1)
        assert images.shape == (30, 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 10
        again, _ = bundled_private_images(30, seed=1)
        assert np.array_equal(images, again)

    def test_no_two_images_are_the_same_crop(self):
        images, _ = bundled_private_images(100)
        flat = images.reshape(100, -1)
        assert len({row.tobytes() for row in flat}) == 100

    def test_private_and_public_photos_are_disjoint(self):
        assert not set(PRIVATE_SOURCE_NAMES) & set(PUBLIC_SOURCE_NAMES)

    def test_other_sizes(self):
        images, _ = bundled_private_images(4, height=24, width=40)
        assert images.shape == (4, 24, 40, 3)


def test_public_pool_of_a_given_size_is_cut_from_the_public_photos_only(tmp_path):
    pool = challenge_public_pool(count=24, cache_dir=tmp_path)
    expected = build_pool(bundled_sources(PUBLIC_SOURCE_NAMES).values(), count=24)
    assert len(pool) == 24 and np.array_equal(pool.pixels.numpy(), expected)


class TestBuildChallenge:
    def test_shapes(self, small_set):
        _, _, challenge, truth = small_set
        assert challenge.encryption.shape == (60, 32, 32, 3) and challenge.encryption.dtype == np.float32
        assert challenge.labels.shape == (60, 10)
        assert truth.pair_indices.shape == (60, 2) and truth.coefficients.shape == (60, 6)
        assert truth.privates.shape == (12, 32, 32, 3)
        assert (challenge.k, challenge.encodings_per_image, challenge.mode) == (6, 5, "cross")

    def test_every_image_is_slot_zero_once_per_round_and_never_its_own_partner(self, small_set):
        _, _, _, truth = small_set
        assert np.array_equal(np.bincount(truth.pair_indices[:, 0]), np.full(12, 5))
        assert np.all(truth.pair_indices[:, 0] != truth.pair_indices[:, 1])

    def test_encodings_are_shuffled(self, small_set):
        _, _, _, truth = small_set
        assert not np.array_equal(truth.pair_indices[:12, 0], np.arange(12))

    def test_labels_hold_each_private_coefficient_at_its_class(self, small_set):
        _, labels, challenge, truth = small_set
        expected = np.zeros((60, 10), np.float32)
        for e, (a, b) in enumerate(truth.pair_indices):
            expected[e, labels[a]] += truth.coefficients[e, 0]
            expected[e, labels[b]] += truth.coefficients[e, 1]
        np.testing.assert_allclose(challenge.labels, expected, atol=1e-6)

    def test_encodings_carry_their_true_private_pair(self, small_set):
        _, _, challenge, truth = small_set
        magnitude = np.abs(challenge.encryption).reshape(60, -1)

        def correlation(pairs: np.ndarray) -> float:
            private = np.abs(truth.coefficients[:, :1] * truth.privates[pairs[:, 0]].reshape(60, -1)
                             + truth.coefficients[:, 1:2] * truth.privates[pairs[:, 1]].reshape(60, -1))
            return float(np.mean([np.corrcoef(m, p)[0, 1] for m, p in zip(magnitude, private, strict=True)]))

        shuffled = np.roll(truth.pair_indices, 1, axis=0)
        assert correlation(truth.pair_indices) > correlation(shuffled) + 0.2
        assert float(magnitude.max()) <= 1.0 + 1e-6

    def test_public_indices_complete_each_encodings_mix(self, small_set):
        _, _, challenge, truth = small_set
        assert truth.public_indices.shape == (60, 4) and truth.public_indices.dtype == np.int64
        publics = SMALL_POOL.images.numpy()[truth.public_indices]  # E, 4, H, W, C
        mix = (np.einsum("ek,ekhwc->ehwc", truth.coefficients[:, :2], truth.privates[truth.pair_indices])
               + np.einsum("ek,ekhwc->ehwc", truth.coefficients[:, 2:], publics))
        np.testing.assert_allclose(np.abs(challenge.encryption), np.abs(mix), atol=1e-5)

    def test_seed_reproduces(self, small_set):
        images, labels, challenge, _ = small_set
        pool = PublicPool.from_array(np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
        again, _ = build_challenge(images, labels, encodings_per_image=5, pool=pool, seed=3)
        assert np.array_equal(again.encryption, challenge.encryption)

    def test_bad_encodings_per_image(self, small_set):
        images, labels, _, _ = small_set
        with pytest.raises(InvalidInputError, match="at least 1"):
            build_challenge(images, labels, encodings_per_image=0)


class TestFiles:
    def test_round_trip_and_the_attack_view_needs_no_truth(self, small_set, tmp_path):
        _, _, challenge, truth = small_set
        save_challenge(tmp_path, challenge, truth)
        (tmp_path / GROUND_TRUTH_FILE).rename(tmp_path.parent / "elsewhere.npz")
        loaded = load_challenge(tmp_path, k=6, encodings_per_image=5)
        assert np.array_equal(loaded.encryption, challenge.encryption)
        assert np.array_equal(loaded.labels, challenge.labels)
        restored = load_ground_truth(tmp_path.parent / "elsewhere.npz")
        assert np.array_equal(restored.pair_indices, truth.pair_indices)
        assert np.array_equal(restored.privates, truth.privates)
        assert np.array_equal(restored.public_indices, truth.public_indices)

    def test_a_ground_truth_file_without_public_indices_still_loads(self, small_set, tmp_path):
        _, _, _, truth = small_set
        save_challenge(tmp_path, small_set[2], replace(truth, public_indices=None))
        assert load_ground_truth(tmp_path).public_indices is None




class TestLoadPrivateImages:
    @staticmethod
    def _write(path, rgb):
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def test_one_class_per_subfolder_in_name_order(self, tmp_path):
        red = np.zeros((40, 60, 3), np.uint8)
        red[..., 0] = 200
        blue = np.zeros((20, 20, 3), np.uint8)
        blue[..., 2] = 90
        self._write(tmp_path / "b_dogs" / "1.png", blue)
        self._write(tmp_path / "a_cats" / "2.png", red)
        self._write(tmp_path / "a_cats" / "1.bmp", red)
        (tmp_path / "a_cats" / "notes.txt").write_text("not an image")
        images, labels = load_private_images(tmp_path, height=16, width=24)
        assert images.shape == (3, 16, 24, 3) and images.dtype == np.uint8
        assert labels.tolist() == [0, 0, 1] and labels.dtype == np.int64
        assert (images[0, ..., 0] == 200).all() and (images[2, ..., 2] == 90).all()  # RGB, not BGR

    def test_flat_folder_gets_pseudo_classes_in_turn(self, tmp_path):
        for i in range(12):
            self._write(tmp_path / f"{i:02d}.png", np.full((32, 32, 3), i * 20, np.uint8))
        images, labels = load_private_images(tmp_path)
        assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
        assert [int(image[0, 0, 0]) for image in images] == [i * 20 for i in range(12)]
        challenge, truth = build_challenge(images, labels, encodings_per_image=2, seed=0)
        assert challenge.encryption.shape == (24, 32, 32, 3) and truth.privates.shape == (12, 32, 32, 3)

    @pytest.mark.parametrize("setup", ["missing", "empty", "unreadable"])
    def test_bad_folders_raise(self, tmp_path, setup):
        folder = tmp_path / "privates"
        if setup != "missing":
            folder.mkdir()
        if setup == "unreadable":
            (folder / "broken.png").write_bytes(b"not a png")
        with pytest.raises(InvalidInputError) as raised:
            load_private_images(folder)
        assert raised.value.field == "images"
