"""A DisguisedNets audit as one call: each attack sees only what its threat level holds, the scores are the
challenge's with each recovery against its own image, and the curves and pictures come with the report."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from instahide_ops.audits.progress import AttackCancelled, CancelToken
from instahide_ops.audits.reconstruction import attack_names, get_attack
from instahide_ops.audits.reconstruction.attack import AttackSettings
from instahide_ops.audits.reconstruction.attack_success import attack_success
from instahide_ops.audits.reconstruction.disguisednets.audit import DisguiseDeployment, audit_disguise
from instahide_ops.audits.reconstruction.disguisednets.view import DisguisedView, KnownPairs
from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.errors import InvalidInputError
from instahide_ops.images import unit_range_array
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise
from instahide_ops.transforms.instahide.challenge import PUBLIC_SOURCE_NAMES, bundled_private_images


@pytest.fixture(scope="module")
def privates() -> tuple[np.ndarray, np.ndarray]:
    return bundled_private_images(40, seed=3)


@pytest.fixture(scope="module")
def public_photos() -> list[np.ndarray]:
    return list(bundled_sources(PUBLIC_SOURCE_NAMES).values())


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_one_known_pair_gives_back_every_noise_free_rmt_image(privates):
    images, labels = privates
    report = audit_disguise(images, labels, DisguiseDeployment(DisguisedNetsParams(block=(4, 4)), known_pairs=1,
                                                               seed=0, curves=False))
    assert list(report.attacks) == ["known_pairs", "disguise_key_aware"]  # no photos: no Level-1 attacker
    assert report.images == 40 and report.encodings == 39 and report.known_pairs == 1
    pairs = report.attacks["known_pairs"]
    assert pairs.permutation_accuracy == 1.0
    assert float(pairs.recovery.best_ssim.min()) >= 0.99 and pairs.scores.max_ssim == pairs.scores.mean_ssim
    assert pairs.recovery.fractions[0.8] == 1.0 and pairs.recovery.best_match.tolist() == list(range(39))
    assert report.attacks["disguise_key_aware"].scores.mean_ssim >= 0.99
    assert report.grid_attack == "known_pairs" and report.curves == () and report.curves_png == b""


def test_scores_are_each_recovery_against_its_own_image(privates):
    images, labels = privates
    report = audit_disguise(images, labels, DisguiseDeployment(DisguisedNetsParams(block=(2, 2), noise=50.0),
                                                               known_pairs=2, seed=1, curves=False))
    pairs = report.attacks["known_pairs"]
    attacked = torch.from_numpy(unit_range_array(images))
    # which images were attacked: each recovery's best original is its own (the attack is strong enough)
    own = torch.stack([ssim(pairs.recovered[i], attacked).argmax() for i in range(len(pairs.recovered))])
    originals = attacked[own]
    assert len(set(own.tolist())) == len(own) == 38
    expected = ssim(pairs.recovered, originals)
    assert torch.allclose(pairs.recovery.best_ssim.double(), expected.double(), atol=1e-6)
    assert pairs.scores.mean_ssim == pytest.approx(float(expected.mean()), abs=1e-6)
    assert pairs.recovery.fractions[0.5] == pytest.approx(float((expected > 0.5).double().mean()))


def test_the_curves_rise_with_pairs_and_fall_with_noise(privates):
    images, labels = privates
    report = audit_disguise(images, labels, DisguiseDeployment(DisguisedNetsParams(block=(2, 2), noise=25.0),
                                                               known_pairs=8, seed=2))
    by_pairs = [p.mean_ssim for p in report.curves if p.attack == "known_pairs" and p.axis == "known_pairs"]
    assert [p.value for p in report.curves if p.attack == "known_pairs" and p.axis == "known_pairs"] == [1, 2, 4, 8]
    assert all(a <= b + 1e-3 for a, b in itertools.pairwise(by_pairs)) and by_pairs[-1] > by_pairs[0]
    noise = sorted((p.value, p.mean_ssim) for p in report.curves if p.attack == "known_pairs" and p.axis == "noise")
    assert [v for v, _ in noise] == [0, 10, 25, 50, 100]
    assert noise[0][1] >= 0.99 and all(a[1] >= b[1] for a, b in itertools.pairwise(noise))
    audited = report.attacks["known_pairs"].scores.mean_ssim
    assert dict(noise)[25.0] == pytest.approx(audited) and by_pairs[-1] == pytest.approx(audited)
    assert _png_size(report.curves_png) == (480, 600)  # two panels
    width, height = _png_size(report.grid_png)
    assert width > 10 * 32 * 4 and height > 2 * 2 * 32 * 4  # 20 pairs in two double-rows, captions and a title


def test_level_1_recovers_rmt_at_the_papers_cifar_setting(privates, public_photos):
    images, labels = privates
    report = audit_disguise(images, labels, DisguiseDeployment(DisguisedNetsParams(block=(2, 2), noise=25.0),
                                                               known_pairs=0, seed=8), photos=public_photos)
    assert list(report.attacks) == ["disguise_ciphertext_only", "disguise_key_aware"]
    level1, bound = report.attacks["disguise_ciphertext_only"], report.attacks["disguise_key_aware"]
    assert level1.permutation_accuracy >= 0.9 and level1.recovery.fractions[0.5] >= 0.9  # the target: half
    assert level1.scores.mean_ssim >= bound.scores.mean_ssim - 0.05
    assert report.curves == ()  # nothing holds pairs: no curve
    assert report.grid_attack == "disguise_ciphertext_only"


def test_aes_scale_8_codebook_and_its_bound(privates):
    images, labels = privates
    report = audit_disguise(images, labels, DisguiseDeployment(DisguisedNetsParams(method="aes", scale=8),
                                                               known_pairs=8, seed=4, curves=False))
    pairs, bound = report.attacks["known_pairs"], report.attacks["disguise_key_aware"]
    assert 0.3 < pairs.hit_rate < 1.0 and pairs.permutation_accuracy == 1.0
    assert bound.hit_rate is None and bound.scores.mean_ssim >= pairs.scores.mean_ssim


def test_the_aes_bound_without_pairs_beats_a_grey_guess(privates, public_photos):
    images, _ = privates
    params = DisguisedNetsParams(method="aes", scale=8)
    key = create_key(params, images.shape[1:], seed=5)
    view = DisguisedView(disguise(torch.from_numpy(images), key), params, photos=public_photos, key=key)
    result = get_attack("disguise_key_aware").run(view, start=None, settings=AttackSettings())
    originals = torch.from_numpy(unit_range_array(images))
    grey = float(ssim(torch.zeros_like(originals), originals).mean())
    assert float(ssim(result.recovered, originals).mean()) > grey + 0.2


def test_each_attack_sees_only_what_it_holds(privates, public_photos):
    images, _ = privates
    params = DisguisedNetsParams(block=(4, 4))
    key = create_key(params, images.shape[1:], seed=6)
    disguised = disguise(torch.from_numpy(images), key)
    full = DisguisedView(disguised[2:], params, KnownPairs(torch.from_numpy(images[:2]), disguised[:2]),
                         public_photos, key)
    for name in attack_names("disguised_nets"):
        attack = get_attack(name)
        held = full.holding(attack.holds)
        assert held.evidence == attack.holds & full.evidence
        with pytest.raises(InvalidInputError):
            attack.run(full.holding(()), start=None, settings=AttackSettings())
        cancel = CancelToken()
        cancel.cancel()
        with pytest.raises(AttackCancelled):
            attack.run(held, start=None, settings=AttackSettings(), cancel=cancel)


@pytest.mark.parametrize(("deployment", "attacks", "field"), [
    (DisguiseDeployment(DisguisedNetsParams(block=(5, 5))), (), "block"),
    (DisguiseDeployment(DisguisedNetsParams(method="des")), (), "method"),
    (DisguiseDeployment(known_pairs=0), ("known_pairs",), "attacks"),
    (DisguiseDeployment(known_pairs=39), (), "known_pairs"),
    (DisguiseDeployment(), ("ciphertext_only",), "attacks"),  # InstaHide's
    (DisguiseDeployment(DisguisedNetsParams(method="aes", scale=4)), ("disguise_key_aware",), "attacks"),
])
def test_bad_configurations_name_their_field(privates, deployment, attacks, field):
    images, labels = privates
    with pytest.raises(InvalidInputError) as caught:
        audit_disguise(images, labels, deployment, attacks=attacks)
    assert caught.value.field == field


def test_attack_success_is_the_papers_ratio(privates):
    images, _ = privates
    originals = unit_range_array(images)
    bright = (originals.mean(axis=(1, 2, 3)) > np.median(originals.mean(axis=(1, 2, 3)))).astype(np.int64)
    perfect = attack_success(originals, originals, bright)
    assert perfect is not None and perfect.success == 1.0 and perfect.original_accuracy >= 0.9
    assert perfect.chance == 0.5
    inverted = attack_success(originals, -originals, bright)  # dark for bright: the classifier is fooled
    assert inverted.recovered_accuracy < inverted.chance and inverted.success < 0.5
    assert attack_success(originals, originals, np.zeros(len(images), dtype=np.int64)) is None  # one class
    coin = np.arange(len(images)) % 2  # labels nothing in the images tells apart
    assert attack_success(originals, originals, coin) is None


def test_level_1_offers_the_reading_the_data_cannot_settle_and_the_audit_scores_the_better(privates, public_photos):
    images, labels = privates
    grey = np.repeat(images.mean(axis=3, keepdims=True).round().astype(np.uint8), 3, axis=3)
    attack = get_attack("disguise_ciphertext_only")
    aes, rmt = DisguisedNetsParams(method="aes", scale=8), DisguisedNetsParams(block=(2, 2))
    cases = [(images, aes, 0), (grey, aes, 1), (images, rmt, 1), (images, dataclasses.replace(rmt, permute=False), 0)]
    for pixels, params, readings in cases:
        key = create_key(params, pixels.shape[1:], seed=9)
        view = DisguisedView(disguise(torch.from_numpy(pixels), key), params, photos=public_photos)
        result = attack.run(view, start=None, settings=AttackSettings())
        assert len(result.alternatives) == readings, params
        if params.method == "rmt" and readings:
            assert torch.equal(result.alternatives[0][0], result.recovered.flip(2))
    report = audit_disguise(grey, labels, DisguiseDeployment(DisguisedNetsParams(method="aes", scale=8), 0, seed=9,
                                                             curves=False), photos=public_photos,
                            attacks=["disguise_ciphertext_only"])
    originals = torch.from_numpy(unit_range_array(grey))
    view = DisguisedView(disguise(torch.from_numpy(grey), create_key(DisguisedNetsParams(method="aes", scale=8),
                                                                     grey.shape[1:], seed=9)),
                         DisguisedNetsParams(method="aes", scale=8), photos=public_photos)
    result = attack.run(view, start=None, settings=AttackSettings())
    best = max(float(ssim(r, originals).mean()) for r in (result.recovered, result.alternatives[0][0]))
    assert report.attacks["disguise_ciphertext_only"].scores.mean_ssim == pytest.approx(best, abs=1e-6)
