"""The Level-2 attack on DisguisedNets RMT: known pairs give back the permutation, the matrices and every image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide_ops.audits.reconstruction.disguisednets.known_pairs import known_pair_attack
from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.errors import InvalidInputError
from instahide_ops.images import resize_image
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """48 crops of the bundled photos, 32×32, the most textured first (the pairs the attacker holds come first)."""
    rng = np.random.default_rng(0)
    crops = []
    for photo in bundled_sources().values():
        for _ in range(5):
            y, x = rng.integers(0, photo.shape[0] - 96), rng.integers(0, photo.shape[1] - 96)
            crops.append(resize_image(photo[y:y + 96, x:x + 96], 32, 32))
    crops.sort(key=lambda crop: -float(crop.std()))
    return torch.from_numpy(np.stack(crops[:48]))


def _ssim(recovered: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    return ssim(recovered / 127.5 - 1, originals.float() / 127.5 - 1)


@pytest.mark.parametrize("params", [
    DisguisedNetsParams(block=(2, 2)),
    DisguisedNetsParams(block=(4, 4)),
    DisguisedNetsParams(block=(8, 8)),
    DisguisedNetsParams(block=(4, 8), permute=False),
    DisguisedNetsParams(block=(4, 4), matrix="gaussian"),
    DisguisedNetsParams(block=(4, 4), matrix="uniform", matrix_per_channel=True),
], ids=["2x2", "4x4", "8x8", "4x8-unpermuted", "gaussian", "uniform-per-channel"])
def test_without_noise_one_pair_finds_the_permutation_and_a_few_give_back_every_image(photos, params):
    key = create_key(params, SHAPE, seed=3)
    disguised = disguise(photos, key)
    if not params.matrix_per_channel:  # a matrix per channel sees r rows a pair: 4 rows fit any 4×4 matrix
        recovered, permutation = known_pair_attack(disguised[2:], photos[:1], disguised[:1], params)
        assert np.array_equal(permutation, key.permutation)
        # One pair leaves R open where its blocks are flat or saturated (too few independent rows).
        assert float(_ssim(recovered, photos[2:]).mean()) >= 0.97
    m = 4 if params.matrix_per_channel else 2  # flat blocks of two pairs still fit several positions per channel
    recovered, permutation = known_pair_attack(disguised[4:], photos[:m], disguised[:m], params)
    assert np.array_equal(permutation, key.permutation)
    assert float(_ssim(recovered, photos[4:]).min()) >= 0.999


def test_with_noise_more_pairs_recover_more(photos):
    params = DisguisedNetsParams(block=(2, 2), noise=25.0)  # the papers' CIFAR-10 setting
    key = create_key(params, SHAPE, seed=4)
    disguised = disguise(photos, key, noise=None)
    targets = photos[16:]
    curve = [float(_ssim(known_pair_attack(disguised[16:], photos[:m], disguised[:m], params)[0], targets).mean())
             for m in (1, 4, 16)]
    assert curve[0] < curve[1] < curve[2] and curve[2] > 0.7, curve


@pytest.mark.parametrize("change, field", [
    (lambda p, d: (p[:0], d[:0]), "pairs"),
    (lambda p, d: (p, d[:, :16]), "pairs"),
])
def test_bad_inputs_name_their_field(photos, change, field):
    params = DisguisedNetsParams()
    disguised = disguise(photos[:4], create_key(params, SHAPE, seed=1))
    pairs, pair_disguised = change(photos[:2], disguised[:2])
    with pytest.raises(InvalidInputError) as caught:
        known_pair_attack(disguised, pairs, pair_disguised, params)
    assert caught.value.field == field


def test_aes_is_not_this_attacks(photos):
    params = DisguisedNetsParams(method="aes")
    disguised = disguise(photos[:2], create_key(params, SHAPE, seed=1))
    with pytest.raises(InvalidInputError, match="codebook") as caught:
        known_pair_attack(disguised, photos[:1], disguised[:1], params)
    assert caught.value.field == "method"


@pytest.mark.parametrize("block", [(4, 4), (8, 8)])
def test_one_grey_pair_is_enough_for_an_orthogonal_key(photos, block):
    # A grey image's three equal channels give the fit no more rows than unknowns; the rows' norms still match.
    grey = photos.float().mean(dim=-1, keepdim=True).round().to(torch.uint8).expand(-1, -1, -1, 3).contiguous()
    params = DisguisedNetsParams(block=block)
    key = create_key(params, SHAPE, seed=3)
    disguised = disguise(grey, key)
    recovered, permutation = known_pair_attack(disguised[1:], grey[:1], disguised[:1], params)
    assert (permutation == key.permutation).all()
    assert float(_ssim(recovered, grey[1:]).mean()) >= 0.97  # flat stretches of the one pair leave some R open
