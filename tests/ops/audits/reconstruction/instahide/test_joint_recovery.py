"""attacks.joint_recovery and the key-aware bound holding the key's whole mapping."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from instahide_ops.audits.reconstruction.instahide.joint_recovery import (
    NORMAL_BYTES_PER_ENTRY,
    recover_with_publics,
    unknowns_that_fit,
)
from instahide_ops.audits.reconstruction.instahide.key_aware import key_aware_attack
from instahide_ops.audits.reconstruction.scores import challenge_scores
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.instahide.challenge import build_challenge, bundled_private_images, challenge_public_pool
from instahide_ops.transforms.instahide.pool import PublicPool

IMAGES, PER_IMAGE = 24, 20


def _challenge(pool_size: int):
    privates, classes = bundled_private_images(IMAGES)
    pool = PublicPool.from_array(challenge_public_pool().pixels.numpy()[:pool_size])
    return build_challenge(privates, classes, encodings_per_image=PER_IMAGE, pool=pool, seed=2)


@pytest.fixture(scope="module")
def reused():
    """A pool of 64 images filling 1,920 public slots: each public is in about 30 encodings."""
    return _challenge(64)


def _bound(challenge, truth, public_indices):
    return key_aware_attack(challenge.encryption, challenge.labels, pair_indices=truth.pair_indices,
                                      coefficients=truth.coefficients, public_indices=public_indices,
                                      num_images=IMAGES)


def _max_ssim(result, truth) -> float:
    return challenge_scores(result.decryption, torch.from_numpy(truth.privates),
                            torch.from_numpy(truth.pair_indices)).max_ssim


def test_solving_reused_publics_lifts_the_bound(reused):
    challenge, truth = reused
    plain = _bound(challenge, truth, None)
    joint = _bound(challenge, truth, truth.public_indices)
    assert list(plain.stage_seconds) == ["recovery", "orientation"]
    assert list(joint.stage_seconds) == ["recovery", "orientation", "shared_publics"]
    assert _max_ssim(joint, truth) > _max_ssim(plain, truth) + 0.1
    assert _max_ssim(joint, truth) > 0.9


def test_publics_seen_once_leave_the_start_unchanged():
    challenge, truth = _challenge(4096)  # 1,920 slots over 2,048 images: most publics are seen once
    magnitudes = torch.from_numpy(np.abs(challenge.encryption))
    start = torch.rand(IMAGES, 32, 32, 3) * 2 - 1
    indices = torch.from_numpy(np.concatenate([truth.pair_indices, truth.public_indices], axis=1))
    result = recover_with_publics(magnitudes, indices, torch.from_numpy(truth.coefficients), start)
    assert torch.equal(result, start)


def test_the_working_memory_bounds_the_publics_solved(reused):
    challenge, truth = reused
    magnitudes = torch.from_numpy(np.abs(challenge.encryption))
    indices = torch.from_numpy(np.concatenate([truth.pair_indices, truth.public_indices], axis=1))
    coefficients = torch.from_numpy(truth.coefficients)
    start = torch.rand(IMAGES, 32, 32, 3) * 2 - 1
    publics = len(np.unique(truth.public_indices))
    assert publics == 64

    def run(unknowns: int) -> torch.Tensor:
        budget = unknowns**2 * NORMAL_BYTES_PER_ENTRY
        assert unknowns_that_fit(budget) == unknowns and unknowns_that_fit(budget - 1) == unknowns - 1
        return recover_with_publics(magnitudes, indices, coefficients, start, steps=3, working_bytes=budget)

    every_public = recover_with_publics(magnitudes, indices, coefficients, start, steps=3)
    assert torch.equal(run(IMAGES + publics), every_public)  # just fits: all 64 are solved, as by default
    one_less = run(IMAGES + publics - 1)  # the least reused public is left as noise
    assert not torch.equal(one_less, every_public) and not torch.equal(one_less, start)
    assert torch.equal(run(IMAGES), start)  # room for the privates alone: nothing to add to the start


def test_unknowns_that_fit():
    assert unknowns_that_fit(1 << 30) == 8192  # the server's default --audit-pool-memory-mib
    assert unknowns_that_fit(64 << 20) == 2048
    assert unknowns_that_fit(1) == 0


def test_progress_reports_every_step(reused):
    challenge, truth = reused
    fractions: list[float] = []
    indices = torch.from_numpy(np.concatenate([truth.pair_indices, truth.public_indices], axis=1))
    recover_with_publics(torch.from_numpy(np.abs(challenge.encryption)), indices,
                         torch.from_numpy(truth.coefficients), torch.zeros(IMAGES, 32, 32, 3), steps=4,
                         report=fractions.append)
    assert fractions == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"magnitudes": torch.rand(8, 4, 4)}, "magnitudes", "expected a floating (E, H, W, C) tensor"),
    ({"magnitudes": torch.rand(0, 4, 4, 3)}, "magnitudes.shape", "no encodings"),
    ({"indices": torch.zeros(5, 6, dtype=torch.long)}, "indices", "expected integer (E = 8"),
    ({"indices": torch.full((8, 6), 9)}, "indices", "private ids must lie in [0, 3)"),
    ({"indices": torch.tensor([[0, 1, -1, 2, 3, 4]] * 8)}, "indices", "public ids must be non-negative"),
    ({"coefficients": torch.full((8, 5), 0.2)}, "coefficients", "expected shape [8, 6]"),
    ({"coefficients": torch.full((8, 6), -0.1)}, "coefficients", "finite and non-negative"),
    ({"start": torch.zeros(3, 4, 4, 1)}, "start", "expected (M, 4, 4, 3)"),
    ({"noise_floor": 0.0}, "noise_floor", "must be positive"),
    ({"public_prior": float("nan")}, "public_prior", "finite and non-negative"),
    ({"steps": 0}, "steps", "at least 1"),
    ({"working_bytes": 0}, "working_bytes", "must be at least 1, got 0"),
])
def test_bad_arguments(change, field, message):
    arguments = {"magnitudes": torch.rand(8, 4, 4, 3), "indices": torch.tensor([[0, 1, 5, 6, 7, 8]] * 8),
                 "coefficients": torch.full((8, 6), 1 / 6), "start": torch.zeros(3, 4, 4, 3), **change}
    with pytest.raises(InvalidInputError, match=re.escape(message)) as error:
        recover_with_publics(arguments.pop("magnitudes"), arguments.pop("indices"), arguments.pop("coefficients"),
                             arguments.pop("start"), **arguments)
    assert error.value.field == field


def test_the_bound_refuses_public_indices_that_do_not_fit_the_coefficients(reused):
    challenge, truth = reused
    with pytest.raises(InvalidInputError, match="to match the coefficients' public slots") as error:
        _bound(challenge, truth, truth.public_indices[:, :3])
    assert error.value.field == "public_indices"
