"""InstaHide's encode and keys: the encoding rule, its keys and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.transforms.instahide.encode import EncodeParams, apply_keys, encode
from instahide_ops.transforms.instahide.keys import JUDGED_AFTER_ROWS, RandomSource, draw_coefficients
from instahide_ops.transforms.instahide.pool import PublicPool

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def batch(n: int = 64, shape: tuple[int, int, int] = (32, 32, 3), classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, classes, size=n))
    return images, labels


def pool_for(shape: tuple[int, int, int] = (32, 32, 3), size: int = 50) -> PublicPool:
    rng = np.random.default_rng(123)
    return PublicPool.from_array(rng.integers(0, 256, size=(size, *shape), dtype=np.uint8))


def reference_encoding(images: np.ndarray, keys, pool: np.ndarray | None) -> np.ndarray:
    """The rule written out in numpy, independently of apply_keys."""
    n = images.shape[0]
    x = images.reshape(n, -1).astype(np.float64) / 127.5 - 1.0
    pub = None if pool is None else pool.reshape(len(pool), -1).astype(np.float64) / 127.5 - 1.0
    lam = keys.coefficients.numpy().astype(np.float64)
    idx = keys.indices.numpy()
    out = np.zeros_like(x)
    for slot in range(keys.k):
        src = x if slot < keys.private_per_mix else pub
        out += lam[:, slot : slot + 1] * src[idx[:, slot]]
    if keys.mask_bits is not None:
        bits = np.unpackbits(keys.mask_bits.numpy(), axis=1, bitorder="little")[:, : x.shape[1]]
        out = np.where(bits == 1, -out, out)
    return out.reshape(images.shape)


class TestCoefficientsAndPartners:
    @pytest.mark.parametrize("mode", ["cross", "inside"])
    def test_coefficients_within_bounds_and_sum_to_one(self, mode):
        images, labels = batch(500)
        result = encode(images, labels, num_classes=10, params=EncodeParams(mode=mode), pool=pool_for())
        lam = result.keys.coefficients
        assert lam.shape == (500, 6 if mode == "cross" else 4)
        assert torch.all(lam >= 0)
        assert torch.allclose(lam.sum(1), torch.ones(500), atol=1e-6)
        assert float(lam.max()) <= 0.65
        if mode == "cross":
            assert float(lam[:, :2].sum(1).min()) >= 0.3

    def test_bounds_are_configurable(self):
        images, labels = batch(300)
        params = EncodeParams(k=4, max_coefficient=0.4, min_private_mass=0.6)
        lam = encode(images, labels, num_classes=10, params=params, pool=pool_for()).keys.coefficients
        assert float(lam.max()) <= 0.4
        assert float(lam[:, :2].sum(1).min()) >= 0.6

    @pytest.mark.parametrize("mode", ["cross", "inside"])
    def test_no_image_is_its_own_partner(self, mode):
        images, labels = batch(3)  # small batches make fixed points likely if not excluded
        for _ in range(50):
            keys = encode(images, labels, num_classes=10, params=EncodeParams(mode=mode), pool=pool_for()).keys
            idx = keys.indices
            assert torch.equal(idx[:, 0], torch.arange(3))
            for slot in range(1, keys.private_per_mix):
                assert torch.all(idx[:, slot] != torch.arange(3))

    def test_public_slots_index_the_pool(self):
        images, labels = batch(200)
        keys = encode(images, labels, num_classes=10, pool=pool_for(size=7)).keys
        public = keys.indices[:, 2:]
        assert int(public.min()) >= 0 and int(public.max()) < 7
        assert len(torch.unique(public)) == 7  # every pool image gets picked in 800 draws
        assert keys.pool_fingerprint == pool_for(size=7).fingerprint

    def test_mask_is_balanced_and_independent_per_encoding(self):
        images, labels = batch(256)
        keys = encode(images, labels, num_classes=10, pool=pool_for()).keys
        bits = np.unpackbits(keys.mask_bits.numpy(), axis=1, bitorder="little")[:, : 32 * 32 * 3]
        assert abs(bits.mean() - 0.5) < 0.005  # 786k fair bits: sd 0.0006
        assert not np.array_equal(bits[0], bits[1])

    def test_sign_flip_off_gives_no_mask_and_nonnegative_weights(self):
        images, labels = batch(16)
        pool_array = np.random.default_rng(1).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
        pool = PublicPool.from_array(pool_array)
        result = encode(images, labels, num_classes=10, params=EncodeParams(sign_flip=False), pool=pool)
        assert result.keys.mask_bits is None
        expected = reference_encoding(images.numpy(), result.keys, pool_array)
        np.testing.assert_allclose(result.encoded.numpy(), expected, atol=1e-5)


class TestEncoding:
    @pytest.mark.parametrize("mode", ["cross", "inside"])
    @pytest.mark.parametrize("shape", [(32, 32, 3), (24, 40, 3), (16, 16, 1)])
    def test_matches_the_rule_recomputed_from_the_key_record(self, mode, shape):
        images, labels = batch(40, shape)
        rng = np.random.default_rng(5)
        pool_array = rng.integers(0, 256, size=(30, *shape), dtype=np.uint8)
        pool = PublicPool.from_array(pool_array)
        result = encode(images, labels, num_classes=10, params=EncodeParams(mode=mode), pool=pool)
        assert result.encoded.shape == images.shape and result.encoded.dtype == torch.float32
        expected = reference_encoding(images.numpy(), result.keys, pool_array)
        np.testing.assert_allclose(result.encoded.numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(result.encoded.abs().numpy(), np.abs(expected), atol=1e-5)

    def test_apply_keys_reproduces_the_encoding_exactly(self):
        images, labels = batch(32)
        pool = pool_for()
        result = encode(images, labels, num_classes=10, pool=pool)
        assert torch.equal(apply_keys(images, result.keys, pool), result.encoded)

    def test_float_input_in_unit_range_equals_uint8_input(self):
        images, labels = batch(8)
        as_float = images.float() / 127.5 - 1.0
        keys = encode(images, labels, num_classes=10, pool=pool_for()).keys
        assert torch.allclose(apply_keys(as_float, keys, pool_for()), apply_keys(images, keys, pool_for()), atol=1e-6)

    def test_float16_output(self):
        images, labels = batch(8)
        result = encode(images, labels, num_classes=10, pool=pool_for(), out_dtype=torch.float16)
        assert result.encoded.dtype == torch.float16
        assert torch.allclose(result.encoded.float(), apply_keys(images, result.keys, pool_for()), atol=2e-3)

    def test_encodings_stay_within_unit_range(self):
        images, labels = batch(64)
        assert float(encode(images, labels, num_classes=10, pool=pool_for()).encoded.abs().max()) <= 1.0 + 1e-6


class TestLabels:
    def test_cross_mode_mixes_private_coefficients_only(self):
        images, labels = batch(100)
        result = encode(images, labels, num_classes=10, pool=pool_for())
        lam, idx = result.keys.coefficients, result.keys.indices
        expected = torch.zeros(100, 10)
        for i in range(100):
            expected[i, labels[i]] += lam[i, 0]
            expected[i, labels[idx[i, 1]]] += lam[i, 1]
        assert torch.allclose(result.mixed_labels, expected, atol=1e-6)
        assert torch.allclose(result.mixed_labels.sum(1), lam[:, :2].sum(1), atol=1e-6)

    def test_inside_mode_labels_sum_to_one(self):
        images, labels = batch(50)
        result = encode(images, labels, num_classes=12, params=EncodeParams(mode="inside"))
        assert result.mixed_labels.shape == (50, 12)
        assert torch.allclose(result.mixed_labels.sum(1), torch.ones(50), atol=1e-6)


class TestKeyFreshness:
    def test_two_calls_never_share_keys(self):
        images, labels = batch(64)
        a = encode(images, labels, num_classes=10, pool=pool_for()).keys
        b = encode(images, labels, num_classes=10, pool=pool_for()).keys
        assert not a.seeded and not b.seeded
        assert not torch.equal(a.coefficients, b.coefficients)
        assert not torch.equal(a.mask_bits, b.mask_bits)
        assert not torch.equal(a.indices, b.indices)

    def test_a_seed_reproduces_and_is_flagged(self):
        images, labels = batch(64)
        a = encode(images, labels, num_classes=10, pool=pool_for(), seed=42)
        b = encode(images, labels, num_classes=10, pool=pool_for(), seed=42)
        c = encode(images, labels, num_classes=10, pool=pool_for(), seed=43)
        assert a.keys.seeded and b.keys.seeded
        assert torch.equal(a.encoded, b.encoded) and torch.equal(a.keys.indices, b.keys.indices)
        assert not torch.equal(a.encoded, c.encoded)


class TestErrors:
    @pytest.mark.parametrize(
        ("images", "field", "match"),
        [
            (torch.zeros(4, 32, 32, dtype=torch.uint8), "images.shape", "expected rank 4"),
            (torch.zeros(0, 32, 32, 3, dtype=torch.uint8), "images.shape", "empty batch"),
            (torch.zeros(4, 32, 32, 3, dtype=torch.int32), "images.dtype", "uint8 or floating"),
            (torch.full((4, 32, 32, 3), float("nan")), "images.content", "NaN or Inf"),
            (torch.full((4, 32, 32, 3), float("inf")), "images.content", "NaN or Inf"),
            (torch.full((4, 32, 32, 3), 2.0), "images.content", r"\[-1, 1\]"),
        ],
    )
    def test_bad_images(self, images, field, match):
        with pytest.raises(InvalidInputError, match=match) as info:
            encode(images, torch.zeros(images.shape[0], dtype=torch.int64), num_classes=2, pool=pool_for())
        assert info.value.field == field

    @pytest.mark.parametrize(
        ("labels", "classes", "match"),
        [
            (torch.zeros(3, dtype=torch.int64), 10, "expected 4 labels"),
            (torch.tensor([0, 1, 2, 10]), 10, r"range \[0, 10\]"),
            (torch.tensor([0, -1, 2, 3]), 10, r"range \[-1, 3\]"),
            (torch.zeros(4), 10, "integer labels"),
            (torch.zeros(4, dtype=torch.int64), 0, "at least 1"),
        ],
    )
    def test_bad_labels(self, labels, classes, match):
        images, _ = batch(4)
        with pytest.raises(InvalidInputError, match=match):
            encode(images, labels, num_classes=classes, pool=pool_for())

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            (EncodeParams(k=1), "config.k"),
            (EncodeParams(k=17), "config.k"),
            (EncodeParams(mode="both"), "config.mode"),
            (EncodeParams(private_per_mix=7), "config.private_per_mix"),
            (EncodeParams(max_coefficient=0.1), "config.max_coefficient"),
            (EncodeParams(min_private_mass=1.5), "config.min_private_mass"),
        ],
    )
    def test_bad_params(self, params, field):
        images, labels = batch(4)
        with pytest.raises(InvalidInputError) as info:
            encode(images, labels, num_classes=10, params=params, pool=pool_for())
        assert info.value.field == field

    @pytest.mark.parametrize(("k", "num_rows"), [(2, 8), (3, 64), (16, 4096)])
    def test_bounds_met_almost_never_are_refused_after_a_bounded_number_of_draws(self, k, num_rows):
        """max_coefficient = 1/k (rounded up to float32) is feasible, but no random row ever meets it."""

        class CountingSource(RandomSource):
            drawn_bytes = 0

            def bytes(self, n: int) -> bytes:
                self.drawn_bytes += n
                return super().bytes(n)

        source = CountingSource()
        with pytest.raises(InvalidInputError, match="met too rarely") as info:
            draw_coefficients(source, num_rows, k, private_slots=2, max_coefficient=float(np.float32(1 / k)),
                              min_private_mass=0.0)
        assert info.value.field == "config.max_coefficient"
        rows = source.drawn_bytes / (k * 2 * 8)  # a half-normal sample takes two 8-byte uniforms
        assert rows <= 4 * JUDGED_AFTER_ROWS + 1100 * num_rows  # was 1000 rounds of 1100 rows per row

    def test_pool_missing_or_mismatched(self):
        images, labels = batch(4)
        with pytest.raises(InvalidInputError, match="needs a public pool"):
            encode(images, labels, num_classes=10)
        with pytest.raises(InvalidInputError, match=r"pool images are \[16, 16, 3\]"):
            encode(images, labels, num_classes=10, pool=pool_for((16, 16, 3)))

    def test_single_image_cannot_be_mixed(self):
        images, labels = batch(1)
        with pytest.raises(InvalidInputError, match="at least 2 images"):
            encode(images, labels, num_classes=10, pool=pool_for())


@CUDA
def test_cuda_matches_cpu_for_the_same_keys():
    images, labels = batch(256)
    pool = pool_for()
    cpu = encode(images, labels, num_classes=10, pool=pool)
    gpu = apply_keys(images.cuda(), cpu.keys, pool.to("cuda"))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu.encoded, atol=1e-6, rtol=0)
    fresh = encode(images.cuda(), labels.cuda(), num_classes=10, pool=pool.to("cuda"))
    assert fresh.encoded.device.type == "cuda" and fresh.mixed_labels.device.type == "cuda"
