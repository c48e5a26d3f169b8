"""The dataset-wide jigsaw solver: blocks moved by one permutation go back where they came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide_ops.audits.reconstruction.disguisednets.jigsaw import solve_jigsaw, solve_jigsaw_with_candidates
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.disguisednets.blocks import move_blocks, to_blocks
from instahide_ops.transforms.instahide.challenge import bundled_private_images


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.from_numpy(bundled_private_images(40, seed=5)[0]).float()


def _pieces(images: torch.Tensor, block: tuple[int, int], permutation: np.ndarray) -> torch.Tensor:
    """(N, P, r, s, C): the blocks of the moved images, at their new positions."""
    return to_blocks(move_blocks(images, block, permutation), block).permute(0, 1, 3, 4, 2)


@pytest.mark.parametrize("block", [(2, 2), (4, 4), (4, 8), (8, 2)], ids=["2x2", "4x4", "4x8", "8x2"])
def test_finds_the_permutation_of_plain_blocks(images, block):
    grid = (32 // block[0], 32 // block[1])
    permutation = np.random.default_rng(sum(block)).permutation(grid[0] * grid[1])
    found = solve_jigsaw(_pieces(images, block, permutation), grid)
    assert np.array_equal(found, permutation)
    # the convention undisguise uses: the inverse moves the blocks back
    assert torch.equal(move_blocks(move_blocks(images, block, permutation), block, np.argsort(found)), images)


def test_noise_still_places_nearly_every_piece(images):
    noisy = images[:20] + 25 * torch.rand(images[:20].shape, generator=torch.Generator().manual_seed(0))
    permutation = np.random.default_rng(1).permutation(256)
    found = solve_jigsaw(_pieces(noisy, (2, 2), permutation), (16, 16))
    assert (found == permutation).mean() >= 0.9


def test_picks_each_positions_true_candidate(images):
    block = (4, 4)
    permutation = np.random.default_rng(2).permutation(64)
    pieces = _pieces(images[:20], block, permutation)
    decoy = pieces.roll(1, dims=2)  # rows rolled: no arrangement of decoys continues across borders
    truth_at = torch.from_numpy(np.random.default_rng(3).integers(0, 2, 64))
    first = torch.where(truth_at.view(1, 64, 1, 1, 1) == 0, pieces, decoy)
    second = torch.where(truth_at.view(1, 64, 1, 1, 1) == 0, decoy, pieces)
    solution = solve_jigsaw_with_candidates(torch.stack([first, second], dim=2), (8, 8))
    assert np.array_equal(solution.permutation, permutation)
    assert np.array_equal(solution.choices, truth_at.numpy())


@pytest.mark.parametrize("pieces, grid, field", [
    (np.zeros((2, 64, 4, 4)), (8, 8), "pieces"),
    (np.zeros((2, 64, 4, 4, 3)), (8, 7), "grid"),
])
def test_bad_inputs_name_their_field(pieces, grid, field):
    with pytest.raises(InvalidInputError) as caught:
        solve_jigsaw(pieces, grid)
    assert caught.value.field == field
