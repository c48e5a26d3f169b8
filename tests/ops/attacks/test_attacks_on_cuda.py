"""Every attack an audit runs, on a CUDA device: it runs there and scores as it does on the CPU.

A server on a GPU host runs its audits on CUDA (``--device auto``), so each attack's CUDA path is what
operators get. Skipped without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from photo_set import IMAGES, PER_IMAGE, SCALES, challenge_over, pool_from, two_photos

from instahide_ops.attacks import create_attack
from instahide_ops.attacks.photo_aware import STAGES as PHOTO_STAGES
from instahide_ops.attacks.pool_aware import STAGES as POOL_AWARE_STAGES
from instahide_ops.metrics import challenge_scores

DEVICE = torch.device("cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

STEPS = 12


@pytest.fixture(scope="module")
def photos():
    return two_photos()


@pytest.fixture(scope="module")
def pool(photos):
    return pool_from(photos)


@pytest.fixture(scope="module")
def challenge(pool):
    return challenge_over(pool)


def _ciphertext_only(challenge, device):
    view, _ = challenge
    return create_attack("ciphertext_only")(view.encryption, view.labels, k=6, encodings_per_image=PER_IMAGE,
                                            similarity="highpass", device=device)


@pytest.fixture(scope="module")
def start(challenge):
    return _ciphertext_only(challenge, DEVICE)


def _max_ssim(result, truth) -> float:
    assert result.device.startswith(DEVICE.type) and result.decryption.device.type == "cpu"
    return challenge_scores(result.decryption, torch.from_numpy(truth.privates),
                            torch.from_numpy(truth.pair_indices)).max_ssim


def test_the_ciphertext_only_attack_scores_as_on_the_cpu(challenge, start):
    _, truth = challenge
    on_cpu = _ciphertext_only(challenge, "cpu")
    assert on_cpu.device == "cpu"
    cpu_score = challenge_scores(on_cpu.decryption, torch.from_numpy(truth.privates),
                                 torch.from_numpy(truth.pair_indices)).max_ssim
    assert abs(_max_ssim(start, truth) - cpu_score) <= 0.03, (_max_ssim(start, truth), cpu_score)
    assert start.recovered.device.type == "cpu" and start.members.shape == (len(truth.pair_indices), 2)


def test_the_key_aware_bound_solves_the_shared_publics_on_cuda(challenge):
    view, truth = challenge

    def bound(device, public_indices):
        as_device = {"pair_indices": torch.from_numpy(truth.pair_indices).to(device),
                     "coefficients": torch.from_numpy(truth.coefficients).to(device)}
        if public_indices is not None:
            as_device["public_indices"] = torch.from_numpy(public_indices).to(device)
        return create_attack("key_aware")(view.encryption, view.labels, num_images=IMAGES, device=device,
                                          **as_device)

    plain, joint = bound(DEVICE, None), bound(DEVICE, truth.public_indices)
    assert list(joint.stage_seconds) == ["recovery", "orientation", "shared_publics"]
    assert _max_ssim(joint, truth) >= _max_ssim(plain, truth) + 0.1  # on the CPU: 0.685 → 0.842
    on_cpu = bound("cpu", truth.public_indices)
    cpu_score = challenge_scores(on_cpu.decryption, torch.from_numpy(truth.privates),
                                 torch.from_numpy(truth.pair_indices)).max_ssim
    assert abs(_max_ssim(joint, truth) - cpu_score) <= 0.02, (_max_ssim(joint, truth), cpu_score)


def test_the_pool_aware_attack_beats_its_start_on_cuda(challenge, start, pool):
    view, truth = challenge
    result = create_attack("pool_aware")(view.encryption, view.labels, pool=pool, start=start,
                                         encodings_per_image=PER_IMAGE, steps=STEPS, device=DEVICE)
    assert list(result.stage_seconds) == list(POOL_AWARE_STAGES)
    assert _max_ssim(result, truth) >= _max_ssim(start, truth) + 0.15  # on the CPU: 0.656 → 0.927


def test_the_photo_aware_attack_beats_its_start_on_cuda(challenge, start, photos):
    view, truth = challenge
    result = create_attack("photo_aware")(view.encryption, view.labels, photos=photos, start=start,
                                          encodings_per_image=PER_IMAGE, scales=SCALES, steps=STEPS, device=DEVICE)
    assert list(result.stage_seconds) == [*PHOTO_STAGES, *POOL_AWARE_STAGES]
    assert 0.5 <= result.public_coverage <= 1.0
    assert _max_ssim(result, truth) >= _max_ssim(start, truth) + 0.15  # on the CPU: 0.656 → 0.890
