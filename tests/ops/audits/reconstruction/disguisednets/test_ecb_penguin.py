"""The Level-1 (ciphertext-only) attack on DisguisedNets AES-ECB: the ECB penguin, given grey levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide_ops.audits.reconstruction.disguisednets.ecb_penguin import ciphertext_only_aes
from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.errors import InvalidInputError
from instahide_ops.images import resize_image
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise
from instahide_ops.transforms.instahide.challenge import PUBLIC_SOURCE_NAMES, bundled_private_images

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def privates() -> torch.Tensor:
    return torch.from_numpy(bundled_private_images(100, seed=0)[0])


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return list(bundled_sources(PUBLIC_SOURCE_NAMES).values())


def _mean_ssim(recovered: torch.Tensor, originals: torch.Tensor) -> float:
    return float(ssim(recovered.float() / 127.5 - 1, originals.float() / 127.5 - 1).mean())


def test_two_pixel_units_show_through_permutation_and_all(privates, photos):
    params = DisguisedNetsParams(method="aes", scale=8)  # the papers' 32 → 256 → 32 variant
    key = create_key(params, SHAPE, seed=3)
    result = ciphertext_only_aes(disguise(privates, key), params, photos)
    assert np.array_equal(result.permutation, key.permutation)
    mean_photo = np.mean([resize_image(photo, 32, 32) for photo in photos], axis=0, dtype=np.float32)
    median_level = float(np.median(np.concatenate([photo.ravel() for photo in photos])))
    chance = max(_mean_ssim(torch.full(privates.shape, level), privates) for level in (127.5, median_level))
    chance = max(chance, _mean_ssim(torch.from_numpy(mean_photo).expand(privates.shape), privates))
    # measured: 0.20–0.23 (sets of seeds 0–3, keys of six seeds) against a chance of about 0.07 (a flat image
    # at the photos' median level scores on the flatter crops)
    assert _mean_ssim(result.recovered, privates) > chance + 0.1
    assert result.seriated_share > 0.9


def test_grey_levels_follow_the_colour_of_natural_photos(privates, photos):
    # the direction of the ordering is read from red against blue: swapping the originals' channels turns it over
    params = DisguisedNetsParams(method="aes", scale=8, permute=False)
    key = create_key(params, SHAPE, seed=4)
    warm = ciphertext_only_aes(disguise(privates, key), params, photos).recovered
    swapped = privates.flip(-1)
    cool = ciphertext_only_aes(disguise(swapped, key), params, photos).recovered
    assert _mean_ssim(warm, privates) > 0.15 and _mean_ssim(cool, swapped) < 0  # measured: about 0.2 and -0.09


@pytest.mark.parametrize("params, field", [
    (DisguisedNetsParams(), "method"),
    (DisguisedNetsParams(method="aes", block=(2, 2), scale=4), "scale"),
])
def test_bad_params_name_their_field(privates, photos, params, field):
    disguised = disguise(privates[:3], create_key(params, SHAPE, seed=1))
    with pytest.raises(InvalidInputError) as caught:
        ciphertext_only_aes(disguised, params, photos)
    assert caught.value.field == field


def test_grey_images_and_no_photos_are_refused(privates, photos):
    params = DisguisedNetsParams(method="aes", scale=8)
    grey = privates[:3, :, :, :1].contiguous()
    with pytest.raises(InvalidInputError) as caught:
        ciphertext_only_aes(disguise(grey, create_key(params, (32, 32, 1), seed=1)), params, photos)
    assert caught.value.field == "shape"
    with pytest.raises(InvalidInputError) as caught:
        ciphertext_only_aes(disguise(privates[:3], create_key(params, SHAPE, seed=1)), params, [])
    assert caught.value.field == "photos"


def test_sixteen_pixel_units_leave_almost_nothing_to_order(privates, photos):
    params = DisguisedNetsParams(method="aes", permute=False)  # a whole 4×4 channel block per codeword
    result = ciphertext_only_aes(disguise(privates[:20], create_key(params, SHAPE, seed=5)), params, photos)
    assert result.seriated_share < 0.05 and bool(torch.isfinite(result.recovered).all())
