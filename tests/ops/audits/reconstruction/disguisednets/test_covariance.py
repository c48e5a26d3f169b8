"""The Level-1 attack on DisguisedNets RMT: the disguised set, the parameters and public photos, never the key."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from instahide_ops.audits.reconstruction.disguisednets.covariance import ciphertext_only_rmt
from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.errors import InvalidInputError
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise, draw_noise
from instahide_ops.transforms.instahide.challenge import PUBLIC_SOURCE_NAMES, bundled_private_images

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def private() -> torch.Tensor:
    return torch.from_numpy(bundled_private_images(60, seed=7)[0])


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return list(bundled_sources(PUBLIC_SOURCE_NAMES).values())


def _mirrored(permutation: np.ndarray, columns: int) -> np.ndarray:
    """The permutation of the mirrored solution: every source cell's column reversed."""
    cells = np.arange(len(permutation))
    return permutation[cells // columns * columns + columns - 1 - cells % columns]


def _attack(private, photos, params, seed):
    """Disguise under a fresh key, attack without it, and score the recoveries in the orientation the attack chose
    and mirrored (the one bit natural statistics cannot settle). Returns the share of positions right in the better
    orientation and its SSIMs."""
    key = create_key(params, SHAPE, seed=seed)
    disguised = disguise(private, key, noise=draw_noise(key, len(private), seed=seed + 1))
    result = ciphertext_only_rmt(disguised, params, photos)
    assert result.recovered.shape == private.shape and result.recovered.dtype == torch.float32
    assert float(result.recovered.min()) >= 0 and float(result.recovered.max()) <= 255
    targets = private.float() / 127.5 - 1
    as_chosen = ssim(result.recovered / 127.5 - 1, targets)
    mirrored = ssim(result.recovered.flip(2) / 127.5 - 1, targets)
    columns = SHAPE[1] // params.block[1]
    if float(as_chosen.mean()) >= float(mirrored.mean()):
        return float((result.permutation == key.permutation).mean()), as_chosen
    return float((_mirrored(result.permutation, columns) == key.permutation).mean()), mirrored


@pytest.mark.parametrize("params, floor", [
    (DisguisedNetsParams(block=(2, 2)), 0.97),  # measured 0.99
    (DisguisedNetsParams(block=(4, 4)), 0.92),  # measured 0.96
    (DisguisedNetsParams(block=(2, 2), noise=25.0), 0.8),  # the papers' CIFAR-10 setting; measured 0.85
    (DisguisedNetsParams(block=(4, 4), noise=25.0, matrix_per_channel=True), 0.77),  # measured 0.82
], ids=["2x2", "4x4", "2x2-noise25", "4x4-noise25-per-channel"])
def test_orthogonal_keys_give_back_the_permutation_and_the_images_up_to_a_mirror(private, photos, params, floor):
    right, scores = _attack(private, photos, params, seed=11)
    assert right >= 0.95
    assert float(scores.mean()) > floor
    assert float((scores > 0.5).float().mean()) >= 0.9


def test_a_key_that_does_not_permute_settles_the_mirror(private, photos):
    params = DisguisedNetsParams(block=(4, 4), permute=False)
    result = ciphertext_only_rmt(disguise(private, create_key(params, SHAPE, seed=13)), params, photos)
    assert np.array_equal(result.permutation, np.arange(64))
    assert float(ssim(result.recovered / 127.5 - 1, private.float() / 127.5 - 1).mean()) > 0.92  # measured 0.96


def test_non_orthogonal_keys_are_read_weaker_but_recognisably(private, photos):
    right, scores = _attack(private, photos, DisguisedNetsParams(block=(2, 2), matrix="gaussian"), seed=12)
    assert right >= 0.9
    assert float(scores.mean()) > 0.5  # measured 0.67: the public photos' contrast stands in for the privates'


def test_reads_only_the_disguised_set_the_parameters_and_photos():
    assert list(inspect.signature(ciphertext_only_rmt).parameters) == ["disguised", "params", "photos"]


@pytest.mark.parametrize("params, photos_held, field", [
    (DisguisedNetsParams(method="aes"), True, "method"),
    (DisguisedNetsParams(block=(3, 4)), True, "block"),
    (DisguisedNetsParams(block=(1, 4), matrix="gaussian"), True, "block"),
    (DisguisedNetsParams(), False, "photos"),
])
def test_bad_inputs_name_their_field(private, photos, params, photos_held, field):
    disguised = torch.rand(4, *SHAPE) * 255
    with pytest.raises(InvalidInputError) as caught:
        ciphertext_only_rmt(disguised, params, photos if photos_held else [])
    assert caught.value.field == field
