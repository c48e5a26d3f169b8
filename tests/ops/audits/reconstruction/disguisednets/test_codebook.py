"""The Level-2 codebook attack on DisguisedNets AES-ECB."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide_ops.audits.reconstruction.disguisednets.codebook import codebook_attack
from instahide_ops.audits.reconstruction.scores import ssim
from instahide_ops.errors import InvalidInputError
from instahide_ops.images import resize_image
from instahide_ops.photos import bundled_sources
from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """80 crops of the bundled photos, 32×32, in a seeded random order."""
    rng = np.random.default_rng(1)
    sources = list(bundled_sources().values())
    crops = []
    for index in range(80):
        photo = sources[index % len(sources)]
        side = int(rng.integers(48, 160))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crops.append(resize_image(photo[y:y + side, x:x + side], 32, 32))
    return torch.from_numpy(np.stack(crops)[rng.permutation(80)])


def _mean_ssim(recovered: torch.Tensor, originals: torch.Tensor) -> float:
    return float(ssim(recovered / 127.5 - 1, originals.float() / 127.5 - 1).mean())


def test_holding_every_unit_decrypts_exactly(photos):
    params = DisguisedNetsParams(method="aes")
    disguised = disguise(photos[:10], create_key(params, SHAPE, seed=2))
    result = codebook_attack(disguised, photos[:10], disguised, params)
    assert result.hit_rate == 1.0 and torch.equal(result.recovered, photos[:10].float())


def test_two_pixel_units_fall_to_twenty_pairs(photos):
    params = DisguisedNetsParams(method="aes", scale=8)  # the papers' 32 → 256 → 32 variant
    key = create_key(params, SHAPE, seed=3)
    disguised = disguise(photos, key)
    targets, held, held_disguised = disguised[20:], photos[:20], disguised[:20]
    few = codebook_attack(targets, held[:1], held_disguised[:1], params)
    many = codebook_attack(targets, held, held_disguised, params)
    assert np.array_equal(many.permutation, key.permutation)
    assert many.hit_rate > 0.5 > few.hit_rate
    assert _mean_ssim(many.recovered, photos[20:]) > _mean_ssim(few.recovered, photos[20:]) + 0.1
    assert _mean_ssim(many.recovered, photos[20:]) > 0.35  # chance (a grey image) is about 0


def test_sixteen_pixel_units_rarely_repeat(photos):
    params = DisguisedNetsParams(method="aes")
    disguised = disguise(photos, create_key(params, SHAPE, seed=4))
    assert codebook_attack(disguised[20:], photos[:20], disguised[:20], params).hit_rate < 0.1  # papers: < 10 %


@pytest.mark.parametrize("params, pairs, field", [
    (DisguisedNetsParams(), 1, "method"),
    (DisguisedNetsParams(method="aes"), 0, "pairs"),
    (DisguisedNetsParams(method="aes", block=(2, 2), scale=4), 1, "scale"),
])
def test_bad_inputs_name_their_field(photos, params, pairs, field):
    disguised = disguise(photos[:3], create_key(params, SHAPE, seed=1))
    with pytest.raises(InvalidInputError) as caught:
        codebook_attack(disguised, photos[:pairs], disguised[:pairs], params)
    assert caught.value.field == field
