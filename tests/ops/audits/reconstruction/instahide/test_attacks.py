"""The attack registry and the two attacks end to end: files only, scores, progress, cancellation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from instahide_ops.audits.progress import AttackCancelled, CancelToken
from instahide_ops.audits.reconstruction import attack_names, get_attack, register_attack
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import (
    STAGES,
    attack_stages,
    ciphertext_only_attack,
    pick_decryption,
)
from instahide_ops.audits.reconstruction.instahide.key_aware import key_aware_attack
from instahide_ops.audits.reconstruction.scores import challenge_scores, recovered_fractions
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.instahide.challenge import (
    GROUND_TRUTH_FILE,
    build_challenge,
    bundled_private_images,
    challenge_public_pool,
    load_challenge,
    load_ground_truth,
    save_challenge,
)

IMAGES, PER_IMAGE = 24, 20


@pytest.fixture(scope="module")
def challenge_dir(tmp_path_factory):
    privates, classes = bundled_private_images(IMAGES)
    challenge, truth = build_challenge(privates, classes, encodings_per_image=PER_IMAGE, seed=5,
                                       pool=challenge_public_pool())
    directory = tmp_path_factory.mktemp("challenge")
    save_challenge(directory, challenge, truth)
    truth_path = directory.parent / "truth-elsewhere.npz"
    (directory / GROUND_TRUTH_FILE).rename(truth_path)  # the attack's folder holds no ground truth
    return directory, truth_path


def test_registry():
    assert {"ciphertext_only", "key_aware", "pool_aware"} <= set(attack_names())
    with pytest.raises(InvalidInputError, match=r"unknown attack 'nope'; expected one of \['ciphertext_only'"):
        get_attack("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_attack(type(get_attack("key_aware")))


class TestCiphertextOnly:
    def test_runs_from_the_challenge_files_alone_and_recovers_above_chance(self, challenge_dir):
        directory, truth_path = challenge_dir
        assert not (directory / GROUND_TRUTH_FILE).exists()
        view = load_challenge(directory, k=6, encodings_per_image=PER_IMAGE)
        events: list[tuple[str, float]] = []
        result = ciphertext_only_attack(view.encryption, view.labels, k=6,
                                                  encodings_per_image=PER_IMAGE,
                                                  progress=lambda stage, f: events.append((stage, f)))
        truth = load_ground_truth(truth_path)
        assert result.decryption.shape == view.encryption.shape
        assert result.recovered.shape[1:] == (32, 32, 3) and len(result.recovered) <= IMAGES
        assert float(result.recovered.abs().max()) <= 1.0
        privates = torch.from_numpy(truth.privates)
        scores = challenge_scores(result.decryption, privates, torch.from_numpy(truth.pair_indices))
        # Random images score about 0.0; the attack recovers real structure (measured ~0.4 here).
        assert scores.max_ssim > 0.25, scores.to_dict()
        assert recovered_fractions(result.recovered, privates).fractions[0.5] > 0.2
        untrained = attack_stages("auto", "cpu")  # on the CPU "auto" uses the high-pass statistic
        assert untrained == [stage for stage in STAGES if stage not in ("training", "self_refinement")]
        assert list(result.stage_seconds) == untrained
        assert list(dict.fromkeys(stage for stage, _ in events)) == untrained
        for stage in untrained:
            fractions = [f for s, f in events if s == stage]
            assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0

    def test_cancel_stops_it(self, challenge_dir):
        directory, _ = challenge_dir
        view = load_challenge(directory, k=6, encodings_per_image=PER_IMAGE)
        cancel = CancelToken()

        def progress(stage: str, fraction: float) -> None:
            if stage == "recovery" and fraction > 0.1:
                threading.Thread(target=cancel.cancel).start()

        with pytest.raises(AttackCancelled):
            ciphertext_only_attack(view.encryption, view.labels, k=6, encodings_per_image=PER_IMAGE,
                                             progress=progress, cancel=cancel)

    @pytest.mark.parametrize(("kwargs", "field"), [
        ({"mode": "inside"}, "mode"), ({"k": 2}, "k"), ({"encodings_per_image": 0}, "encodings_per_image"),
    ])
    def test_bad_parameters(self, kwargs, field):
        options = {"k": 6, "encodings_per_image": 4, **kwargs}
        with pytest.raises(InvalidInputError) as info:
            ciphertext_only_attack(np.zeros((8, 32, 32, 3), np.float32), np.zeros((8, 10)), **options)
        assert info.value.field == field

    def test_bad_arrays(self):
        with pytest.raises(InvalidInputError, match=r"\(E, H, W, C\)"):
            ciphertext_only_attack(np.zeros((8, 32, 32)), np.zeros((8, 10)), k=6, encodings_per_image=4)
        with pytest.raises(InvalidInputError, match="classes"):
            ciphertext_only_attack(np.zeros((8, 32, 32, 3)), np.zeros((7, 10)), k=6, encodings_per_image=4)


def test_key_aware_bound_beats_the_ciphertext_only_attack(challenge_dir):
    directory, truth_path = challenge_dir
    view = load_challenge(directory, k=6, encodings_per_image=PER_IMAGE)
    truth = load_ground_truth(truth_path)
    privates, pairs = torch.from_numpy(truth.privates), torch.from_numpy(truth.pair_indices)
    bound = key_aware_attack(view.encryption, view.labels, pair_indices=truth.pair_indices,
                                       coefficients=truth.coefficients, num_images=IMAGES)
    blind = ciphertext_only_attack(view.encryption, view.labels, k=6, encodings_per_image=PER_IMAGE)
    bound_score = challenge_scores(bound.decryption, privates, pairs).max_ssim
    assert bound_score > 0.4
    assert bound_score >= challenge_scores(blind.decryption, privates, pairs).max_ssim - 0.02
    assert torch.equal(bound.members, pairs)
    with pytest.raises(InvalidInputError, match=r"\[0, 3\)"):
        key_aware_attack(view.encryption, view.labels, pair_indices=truth.pair_indices,
                                   coefficients=truth.coefficients, num_images=3)


def test_the_pick_answers_with_the_heavier_member_unless_its_cluster_size_is_far_off():
    recovered = torch.arange(3.0)[:, None, None, None].expand(3, 2, 2, 1)
    # Cluster 0 holds every encoding (a blend of images); clusters 1 and 2 two each, as expected.
    members = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 2]])
    weights = torch.tensor([[0.4, 0.3], [0.4, 0.01], [0.2, 0.3], [0.5, 0.45]])
    by_weight = pick_decryption(recovered, members, weights)[:, 0, 0, 0]
    assert by_weight.tolist() == [0.0, 0.0, 2.0, 0.0]
    # Cluster 0's size 4 against 2 expected: its λ counts (2/4)**4 = 1/16, so 0.4 still beats 0.01 but no more.
    discounted = pick_decryption(recovered, members, weights, expected_appearances=2)[:, 0, 0, 0]
    assert discounted.tolist() == [1.0, 0.0, 2.0, 2.0]
