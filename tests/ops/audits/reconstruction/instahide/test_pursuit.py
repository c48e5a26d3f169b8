"""pursuit: matching pursuit over a pool, with its Gram matrix stored or computed."""

from __future__ import annotations

import pytest
import torch

from instahide_ops.audits.reconstruction.instahide import pursuit
from instahide_ops.audits.reconstruction.instahide.pool_aware import DEFAULT_ATOMS
from instahide_ops.audits.reconstruction.instahide.pursuit import PoolGram, match_public_mix, pursue_from_correlations
from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.instahide.challenge import bundled_private_images, challenge_public_pool
from instahide_ops.transforms.instahide.encode import EncodeParams, encode

IMAGES = 20


@pytest.fixture(scope="module")
def pool():
    return challenge_public_pool()


class TestMatchPublicMix:
    def test_names_the_images_and_weights_of_exact_mixes(self):
        generator = torch.Generator().manual_seed(0)
        pool = torch.rand(300, 3 * 16 * 16, generator=generator) * 2 - 1
        chosen = torch.stack([torch.randperm(300, generator=generator)[:4] for _ in range(50)])
        weights = torch.rand(50, 4, generator=generator) * 0.2 + 0.05
        mixes = (weights[:, :, None] * pool[chosen]).sum(dim=1)
        named, fitted = match_public_mix(mixes, pool, atoms=4, chunk=16)  # chunks of 16 cover 50 rows
        order, truth_order = named.argsort(dim=1), chosen.argsort(dim=1)
        assert torch.equal(named.gather(1, order), chosen.gather(1, truth_order))
        torch.testing.assert_close(fitted.gather(1, order), weights.gather(1, truth_order), atol=1e-4, rtol=0)

    def test_names_most_public_images_of_real_mixes(self, pool):
        # The true signed public part of real encodings, over the real pool (overlapping crops, near
        # duplicates): matching pursuit names >= 90 % of the public images (measured 96 % on 1,000 encodings).
        privates, classes = bundled_private_images(IMAGES)
        batch = encode(torch.from_numpy(privates), torch.from_numpy(classes), num_classes=10,
                       params=EncodeParams(mode="cross", k=6), pool=pool, seed=(0, 0))
        publics, weights = batch.keys.indices[:, 2:], batch.keys.coefficients[:, 2:]
        flat = pool.images.float().reshape(len(pool), -1)
        mixes = (weights[:, :, None] * flat[publics]).sum(dim=1)
        named, fitted = match_public_mix(mixes, flat, atoms=DEFAULT_ATOMS)
        kept = named.gather(1, fitted.topk(4, dim=1).indices)
        assert float((kept[:, :, None] == publics[:, None, :]).any(dim=1).float().mean()) >= 0.9

    def test_the_gram_path_names_what_the_explicit_path_names(self):
        generator = torch.Generator().manual_seed(1)
        pool = torch.rand(200, 192, generator=generator) * 2 - 1
        targets = torch.rand(40, 192, generator=generator) - 0.5
        explicit = match_public_mix(targets, pool, atoms=5)
        from_gram = match_public_mix(targets, pool, atoms=5, gram=PoolGram(pool))
        assert torch.equal(explicit[0], from_gram[0])
        torch.testing.assert_close(explicit[1], from_gram[1], atol=1e-4, rtol=0)

    # Room for 20 targets with the stored matrix (which takes just what the working memory allows), and for 7
    # when the residuals are correlated with the pool at every step.
    @pytest.mark.parametrize(("stored", "working_bytes", "expected"), [
        (True, 200 * 200 * 4, [20, 20]),
        (False, 7 * pursuit.EXPLICIT_FLOATS_PER_TARGET * 200 * 4, [7] * 5 + [5]),
    ])
    def test_a_pool_too_large_for_the_working_memory_is_matched_in_smaller_batches(self, monkeypatch, stored,
                                                                                    working_bytes, expected):
        generator = torch.Generator().manual_seed(1)
        pool = torch.rand(200, 192, generator=generator) * 2 - 1
        targets = torch.rand(40, 192, generator=generator) - 0.5
        whole = match_public_mix(targets, pool, atoms=5, gram=PoolGram(pool) if stored else None)
        batches = []

        def counted(real):
            def pursue(target, *args, **kwargs):
                batches.append(len(target))
                return real(target, *args, **kwargs)
            return pursue

        for name in ("pursue_from_correlations", "_pursue_explicitly"):
            monkeypatch.setattr(pursuit, name, counted(getattr(pursuit, name)))
        gram = PoolGram(pool, working_bytes=working_bytes)
        assert gram.stored == stored
        split = match_public_mix(targets, pool, atoms=5, gram=gram)
        assert batches == expected
        assert torch.equal(whole[0], split[0])
        torch.testing.assert_close(whole[1], split[1], atol=1e-5, rtol=0)

    def test_bad_arguments(self):
        pool = torch.zeros(5, 12)
        with pytest.raises(InvalidInputError, match="residuals and an"):
            match_public_mix(torch.zeros(3, 10), pool, atoms=2)
        with pytest.raises(InvalidInputError, match=r"must lie in \[1, 5\]"):
            match_public_mix(torch.zeros(3, 12), pool, atoms=6)
        with pytest.raises(InvalidInputError, match=r"gram was built over a pool of shape \[4, 12\]"):
            match_public_mix(torch.zeros(3, 12), pool, atoms=2, gram=PoolGram(torch.zeros(4, 12)))


class TestPoolGram:
    def test_holds_the_whole_matrix_up_to_its_limit(self, monkeypatch):
        pool = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
        monkeypatch.setattr(pursuit, "GRAM_MAX_POOL", 40)
        gram = PoolGram(pool)
        assert gram.stored
        torch.testing.assert_close(gram.matrix, pool @ pool.T)
        torch.testing.assert_close(gram.norms, pool.norm(dim=1))

    def test_holds_the_matrix_only_when_it_fits_in_the_working_memory(self):
        pool = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
        matrix_bytes = 40 * 40 * pool.element_size()
        assert PoolGram(pool, working_bytes=matrix_bytes).stored
        assert not PoolGram(pool, working_bytes=matrix_bytes - 1).stored
        with pytest.raises(InvalidInputError, match="must be positive"):
            PoolGram(pool, working_bytes=0)

    def test_over_its_limit_computes_the_rows_the_matrix_would_hold(self, monkeypatch):
        pool = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
        stored = PoolGram(pool)
        monkeypatch.setattr(pursuit, "GRAM_MAX_POOL", 39)
        computed = PoolGram(pool)
        assert not computed.stored and computed.matrix is None
        indices = torch.tensor([5, 0, 5, 39, 12])  # repeats: computed once, handed to each row
        torch.testing.assert_close(computed.rows(indices), stored.rows(indices))
        torch.testing.assert_close(computed.norms, stored.norms)


    def test_sharing_hands_out_computed_rows_again(self, monkeypatch):
        pool = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
        stored = PoolGram(pool)
        monkeypatch.setattr(pursuit, "GRAM_MAX_POOL", 39)
        computed = PoolGram(pool)
        with computed.sharing_rows():
            first = computed.rows(torch.tensor([5, 0, 5]))
            assert computed.rows_computed == 2
            second = computed.rows(torch.tensor([0, 12, 5, 12]))
            assert computed.rows_computed == 3  # only 12 is new
        torch.testing.assert_close(first, stored.rows(torch.tensor([5, 0, 5])))
        torch.testing.assert_close(second, stored.rows(torch.tensor([0, 12, 5, 12])))
        computed.rows(torch.tensor([0]))
        assert computed.rows_computed == 4  # outside the block nothing is kept

    def test_sharing_keeps_no_more_rows_than_its_bound(self):
        pool = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
        stored = PoolGram(pool)
        row_bytes = len(pool) * pool.element_size()
        computed = PoolGram(pool, working_bytes=round(2 * row_bytes / pursuit.SHARED_ROWS_FRACTION))  # two rows
        assert not computed.stored
        with computed.sharing_rows():
            computed.rows(torch.tensor([1, 2, 3]))
            again = computed.rows(torch.tensor([3, 2, 1]))
            assert computed.rows_computed == 4  # 1 and 2 kept; 3 computed twice
        torch.testing.assert_close(again, stored.rows(torch.tensor([3, 2, 1])))


class TestPursueFromCorrelations:
    def test_computed_rows_name_what_the_stored_matrix_names(self, pool, monkeypatch):
        # Real pool images (overlapping crops, so close calls) and real-looking targets: mixes of pool
        # images plus noise.
        flat = pool.images.float().reshape(len(pool), -1)
        generator = torch.Generator().manual_seed(2)
        chosen = torch.randint(len(flat), (64, 4), generator=generator)
        targets = 0.2 * flat[chosen].sum(dim=1) + 0.1 * torch.randn(64, flat.shape[1], generator=generator)
        stored = pursue_from_correlations(targets @ flat.T, PoolGram(flat), atoms=6)
        monkeypatch.setattr(pursuit, "GRAM_MAX_POOL", len(flat) - 1)
        computed = pursue_from_correlations(targets @ flat.T, PoolGram(flat), atoms=6)
        assert torch.equal(stored[0], computed[0])
        torch.testing.assert_close(stored[1], computed[1], atol=1e-4, rtol=0)
        torch.testing.assert_close(stored[2], flat[stored[0]] @ flat[stored[0]].transpose(1, 2), rtol=1e-4, atol=0)
        named = (stored[0][:, :, None] == chosen[:, None, :]).any(dim=1).float().mean()
        assert float(named) >= 0.9  # the test means something only if the pursuit works here
