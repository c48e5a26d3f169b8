"""Every attack an audit runs, on a CUDA device: it runs there and scores as it does on the CPU.

A server on a GPU host runs its audits on CUDA (``--device auto``), so each attack's CUDA path is what
operators get. Skipped without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from photo_set import IMAGES, PER_IMAGE, SCALES

from instahide_ops.audits.reconstruction.instahide.ciphertext_only import ciphertext_only_attack
from instahide_ops.audits.reconstruction.instahide.key_aware import key_aware_attack
from instahide_ops.audits.reconstruction.instahide.photo_aware import STAGES as PHOTO_STAGES
from instahide_ops.audits.reconstruction.instahide.photo_aware import photo_aware_attack
from instahide_ops.audits.reconstruction.instahide.pool_aware import STAGES as POOL_AWARE_STAGES
from instahide_ops.audits.reconstruction.instahide.pool_aware import pool_aware_attack
from instahide_ops.audits.reconstruction.instahide.self_refine import RefinementConfig
from instahide_ops.audits.reconstruction.scores import challenge_scores

DEVICE = torch.device("cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

STEPS = 12


def _ciphertext_only(challenge, device):
    view, _ = challenge
    return ciphertext_only_attack(view.encryption, view.labels, k=6, encodings_per_image=PER_IMAGE,
                                            similarity="highpass", device=device)


@pytest.fixture(scope="module")
def start(crop_challenge):
    return _ciphertext_only(crop_challenge, DEVICE)


def _max_ssim(result, truth) -> float:
    return challenge_scores(result.decryption, torch.from_numpy(truth.privates),
                            torch.from_numpy(truth.pair_indices)).max_ssim


def _ran_on_the_device(result) -> bool:
    """Computed on ``DEVICE`` and handed back on the CPU, as ``AttackResult`` promises."""
    return result.device.startswith(DEVICE.type) and all(
        t.device.type == "cpu" for t in (result.recovered, result.decryption, result.members, result.coefficients))


def test_the_ciphertext_only_attack_scores_as_on_the_cpu(crop_challenge, start):
    _, truth = crop_challenge
    on_cpu = _ciphertext_only(crop_challenge, "cpu")
    assert _ran_on_the_device(start) and on_cpu.device == "cpu"
    assert start.members.shape == on_cpu.members.shape == (len(truth.pair_indices), 2)
    assert abs(_max_ssim(start, truth) - _max_ssim(on_cpu, truth)) <= 0.03, (_max_ssim(start, truth),
                                                                              _max_ssim(on_cpu, truth))


def test_the_key_aware_bound_solves_the_shared_publics_on_cuda(crop_challenge):
    view, truth = crop_challenge

    def bound(device, public_indices):
        # Given as tensors already on the device, as a caller holding them there would pass them.
        as_device = {"pair_indices": torch.from_numpy(truth.pair_indices).to(device),
                     "coefficients": torch.from_numpy(truth.coefficients).to(device)}
        if public_indices is not None:
            as_device["public_indices"] = torch.from_numpy(public_indices).to(device)
        return key_aware_attack(view.encryption, view.labels, num_images=IMAGES, device=device,
                                          **as_device)

    plain, joint, on_cpu = bound(DEVICE, None), bound(DEVICE, truth.public_indices), bound("cpu", truth.public_indices)
    assert _ran_on_the_device(plain) and _ran_on_the_device(joint)
    assert list(joint.stage_seconds) == ["recovery", "orientation", "shared_publics"]
    joint_score = _max_ssim(joint, truth)
    assert joint_score >= _max_ssim(plain, truth) + 0.1  # on the CPU: 0.685 → 0.842
    assert abs(joint_score - _max_ssim(on_cpu, truth)) <= 0.02, (joint_score, _max_ssim(on_cpu, truth))


def test_the_pool_aware_attack_beats_its_start_on_cuda(crop_challenge, start, crop_pool):
    view, truth = crop_challenge
    result = pool_aware_attack(view.encryption, view.labels, pool=crop_pool, start=start,
                                         encodings_per_image=PER_IMAGE, steps=STEPS, device=DEVICE)
    assert _ran_on_the_device(result) and list(result.stage_seconds) == list(POOL_AWARE_STAGES)
    assert _max_ssim(result, truth) >= _max_ssim(start, truth) + 0.15  # on the CPU: 0.656 → 0.927


def test_the_photo_aware_attack_beats_its_start_on_cuda(crop_challenge, start, photos):
    view, truth = crop_challenge
    result = photo_aware_attack(view.encryption, view.labels, photos=photos, start=start,
                                          encodings_per_image=PER_IMAGE, scales=SCALES, steps=STEPS, device=DEVICE)
    assert _ran_on_the_device(result) and list(result.stage_seconds) == [*PHOTO_STAGES, *POOL_AWARE_STAGES]
    assert 0.5 <= result.public_coverage <= 1.0
    assert _max_ssim(result, truth) >= _max_ssim(start, truth) + 0.15  # on the CPU: 0.656 → 0.890


def test_the_self_refinement_trains_and_refines_on_cuda(crop_challenge):
    view, truth = crop_challenge
    refinement = RefinementConfig(sets=1, steps=20, batch=16)
    refined, on_cpu = (ciphertext_only_attack(view.encryption, view.labels, k=6,
                                                        encodings_per_image=PER_IMAGE, similarity="highpass",
                                                        device=device, refinement=refinement)
                       for device in (DEVICE, "cpu"))
    assert _ran_on_the_device(refined) and list(refined.stage_seconds)[-1] == "self_refinement"
    assert abs(_max_ssim(refined, truth) - _max_ssim(on_cpu, truth)) <= 0.03, (_max_ssim(refined, truth),
                                                                                _max_ssim(on_cpu, truth))
