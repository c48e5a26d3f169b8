"""The attacker's self-trained refiner: its synthetic publics, its network, its training, and the attack stage."""

from __future__ import annotations

import pytest
import torch

from instahide_ops.audits.reconstruction.attack import AttackResult
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import STAGES, attack_stages, ciphertext_only_attack
from instahide_ops.audits.reconstruction.instahide.recovery import DEFAULT_PUBLIC_BRIGHTNESS_STD, NATURAL_CHANNEL_MEAN
from instahide_ops.audits.reconstruction.instahide.self_refine import (
    RefinementConfig,
    StructureRefiner,
    refine_recoveries,
    simulated_pairs,
    synthetic_publics,
    train_refiner,
)
from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.errors import InvalidInputError
from instahide_ops.images import unit_range_array, unit_range_to_uint8
from instahide_ops.transforms.instahide.challenge import build_challenge, bundled_private_images, challenge_public_pool
from instahide_ops.transforms.instahide.pool import PublicPool

MEAN = torch.tensor(NATURAL_CHANNEL_MEAN)


def _publics(count: int = 2048, seed: int = 0) -> torch.Tensor:
    return synthetic_publics(count, 32, 32, 3, public_mean=MEAN, generator=torch.Generator().manual_seed(seed))


def test_synthetic_publics_have_the_brightness_and_spectrum_the_recovery_assumes():
    images = _publics()
    assert images.shape == (2048, 32, 32, 3) and images.min() >= -1 and images.max() <= 1
    brightness = images.mean(dim=(1, 2))
    # Clipping at ±1 pulls the spread and the means in a little.
    assert torch.allclose(brightness.mean(0), MEAN, atol=0.03), brightness.mean(0)
    assert torch.all((brightness.std(0) - DEFAULT_PUBLIC_BRIGHTNESS_STD).abs() < 0.06), brightness.std(0)
    assert float(torch.corrcoef(brightness.T).min()) > 0.8  # bright in one channel, bright in all
    within = (images - images.mean(dim=(1, 2), keepdim=True)).std(dim=(1, 2)).mean()
    assert 0.25 < float(within) < 0.40
    power = torch.fft.fft2(images.permute(0, 3, 1, 2)).abs().pow(2).mean(dim=(0, 1))
    assert float(power[1, 1]) > 20 * float(power[8, 8])  # natural images' falling spectrum, not white noise


def test_synthetic_publics_repeat_for_a_seed_and_differ_across_seeds():
    assert torch.equal(_publics(16, seed=3), _publics(16, seed=3))
    assert not torch.equal(_publics(16, seed=3), _publics(16, seed=4))


def test_the_refiner_starts_as_the_identity_and_never_moves_a_channel_mean():
    images = torch.rand(6, 32, 32, 3) - 0.5
    net = StructureRefiner()
    assert torch.allclose(net(images), images)
    torch.manual_seed(0)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    refined = net(images)
    assert not torch.allclose(refined, images, atol=1e-3)
    assert torch.allclose(refined.mean(dim=(1, 2)), images.mean(dim=(1, 2)), atol=1e-5)


@pytest.fixture(scope="module")
def noisy_photos():
    clean = torch.from_numpy(unit_range_array(bundled_private_images(48)[0]))[:, 8:24, 8:24]  # small: fast steps
    noisy = (clean + 0.25 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    return noisy, clean


def test_training_learns_to_undo_a_degradation_on_images_it_never_saw(noisy_photos):
    noisy, clean = noisy_photos
    net = train_refiner(noisy[:32], clean[:32], steps=200, batch=64, seed=0)
    with torch.no_grad():
        before, after = ssim(noisy[32:], clean[32:]).mean(), ssim(net(noisy[32:]), clean[32:]).mean()
    assert after > before + 0.01, (float(before), float(after))  # measured 0.431 -> 0.451


def test_equal_seeds_train_equal_refiners(noisy_photos):
    noisy, clean = noisy_photos
    first, second = (train_refiner(noisy[:8], clean[:8], steps=3, batch=4, seed=7) for _ in range(2))
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_simulated_pairs_match_each_recovery_of_a_recovery_to_its_source():
    images, classes = bundled_private_images(20)
    images = torch.from_numpy(unit_range_array(images))
    pool = PublicPool.from_array(unit_range_to_uint8(_publics(256).numpy()))

    def attack(encryption, labels):
        return ciphertext_only_attack(encryption, labels, k=6, encodings_per_image=10)

    inputs, targets = simulated_pairs(images, torch.from_numpy(classes), attack, k=6, encodings_per_image=10,
                                      pool=pool, sets=1, seed=0)
    assert inputs.shape == targets.shape and 10 <= len(inputs) <= 20
    # Every target is one of the images given, and each input resembles its own target most.
    assert all(bool((images == target).all(dim=(1, 2, 3)).any()) for target in targets)
    scores = ssim(inputs[:, None], images[None])
    own = torch.tensor([int((images == target).all(dim=(1, 2, 3)).nonzero()[0]) for target in targets])
    assert float((scores.argmax(1) == own).float().mean()) > 0.7


def test_the_attack_refines_as_its_last_stage_from_the_challenge_arrays_alone():
    privates, classes = bundled_private_images(20)
    challenge, _ = build_challenge(privates, classes, encodings_per_image=10, seed=2, pool=challenge_public_pool())
    attack = ciphertext_only_attack
    events: list[tuple[str, float]] = []
    config = RefinementConfig(sets=1, steps=20, batch=16, seed=0)
    refined = attack(challenge.encryption, challenge.labels, k=6, encodings_per_image=10, refinement=config,
                     progress=lambda stage, fraction: events.append((stage, fraction)))
    plain = attack(challenge.encryption, challenge.labels, k=6, encodings_per_image=10)
    assert list(refined.stage_seconds) == attack_stages("auto", "cpu", refine=True) == [
        stage for stage in STAGES if stage != "training"]
    fractions = [f for s, f in events if s == "self_refinement"]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    # Same clusters, a changed picture with the same brightness, and a decryption drawn from the refined images.
    assert torch.equal(refined.members, plain.members)
    assert not torch.allclose(refined.recovered, plain.recovered, atol=1e-4)
    assert torch.allclose(refined.recovered.mean(dim=(1, 2)), plain.recovered.mean(dim=(1, 2)), atol=0.02)
    assert all(bool((refined.recovered == d).all(dim=(1, 2, 3)).any()) for d in refined.decryption[:20])
    again = attack(challenge.encryption, challenge.labels, k=6, encodings_per_image=10, refinement=config)
    assert torch.equal(again.recovered, refined.recovered)


def test_simulated_sets_that_teach_nothing_leave_the_recoveries_as_they_are():
    images, classes = bundled_private_images(12)
    images = torch.from_numpy(unit_range_array(images))

    def one_cluster(encryption, labels):  # every encoding in one cluster: no cluster holds mostly one image
        members = torch.zeros(len(encryption), 2, dtype=torch.int64)
        return AttackResult(recovered=images[:1], decryption=torch.from_numpy(encryption), members=members,
                            coefficients=torch.full((len(encryption), 2), 0.3))

    refined = refine_recoveries(images, torch.from_numpy(classes), one_cluster, k=6, encodings_per_image=4,
                                public_mean=MEAN, config=RefinementConfig(sets=2, steps=5))
    assert refined is images


@pytest.mark.parametrize("field", ["sets", "steps", "batch"])
def test_a_refinement_of_nothing_is_refused_before_any_work(field):
    privates, classes = bundled_private_images(4)
    challenge, _ = build_challenge(privates, classes, encodings_per_image=2, seed=0, pool=challenge_public_pool())
    with pytest.raises(InvalidInputError, match="at least 1") as error:
        ciphertext_only_attack(challenge.encryption, challenge.labels, k=6, encodings_per_image=2,
                                         refinement=RefinementConfig(**{field: 0}))
    assert error.value.field == f"refinement.{field}"
