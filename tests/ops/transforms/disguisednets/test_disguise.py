"""DisguisedNets disguising: the properties an owner relies on, checked on random and photo images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from instahide_ops.errors import InvalidInputError
from instahide_ops.randomness import RandomSource
from instahide_ops.transforms import get_transform
from instahide_ops.transforms.disguisednets import DisguisedNetsParams, create_key, disguise, undisguise
from instahide_ops.transforms.disguisednets.blocks import from_blocks, to_blocks
from instahide_ops.transforms.disguisednets.keys import haar_orthogonal

SHAPE = (32, 32, 3)


def images(n: int = 6, seed: int = 0, shape=SHAPE) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8))


class TestBlocks:
    def test_blocks_are_the_image_slices_in_row_major_order(self):
        x = images(2, shape=(8, 12, 3))
        blocks = to_blocks(x, (4, 3))
        assert blocks.shape == (2, 8, 3, 4, 3)
        # position 5 is grid row 1, column 1: rows 4..8, columns 3..6
        assert torch.equal(blocks[1, 5], x[1, 4:8, 3:6].permute(2, 0, 1))
        assert torch.equal(from_blocks(blocks, 8, 12), x)

    def test_a_marked_block_lands_at_its_permuted_position(self):
        key = create_key(DisguisedNetsParams(method="rmt", block=(4, 4)), SHAPE, seed=3)
        x = torch.zeros(1, *SHAPE, dtype=torch.uint8)
        x[0, 8:12, 20:24] = 255  # position 2 * 8 + 5
        y = undisguise(disguise(x, key), key)  # identity back, so compare where the disguised energy sits
        assert torch.allclose(y, x.float(), atol=1e-3)
        energy = to_blocks(disguise(x, key), (4, 4)).pow(2).sum(dim=(2, 3, 4))[0]
        assert int(energy.argmax()) == int(key.permutation[2 * 8 + 5])
        assert int((energy > 1e-6).sum()) == 1


class TestRMT:
    @pytest.mark.parametrize("matrix", ["orthogonal", "gaussian", "uniform"])
    @pytest.mark.parametrize("per_channel", [False, True])
    def test_undisguise_inverts_a_noise_free_key(self, matrix, per_channel):
        params = DisguisedNetsParams(method="rmt", block=(4, 4), matrix=matrix, matrix_per_channel=per_channel)
        for seed in range(3):  # seeded keys: float32 rounding grows with a matrix's condition (at most 1e3)
            key = create_key(params, SHAPE, seed=seed)
            x = images(seed=seed)
            y = disguise(x, key)
            assert y.dtype == torch.float32 and y.shape == x.shape
            assert not torch.allclose(y, x.float(), atol=1.0)
            assert torch.allclose(undisguise(y, key), x.float(), atol=0.05)

    def test_orthogonal_matrices_keep_each_block_rows_norm(self):
        key = create_key(DisguisedNetsParams(block=(4, 8), permute=False), SHAPE)
        x = images()
        before = to_blocks(x.float(), (4, 8)).norm(dim=-1)
        after = to_blocks(disguise(x, key), (4, 8)).norm(dim=-1)
        assert torch.allclose(before, after, rtol=1e-5, atol=1e-3)

    def test_haar_matrices_are_orthogonal_with_both_determinant_signs(self):
        source = RandomSource(0)
        dets = []
        for _ in range(40):
            q = haar_orthogonal(source, 4)
            np.testing.assert_allclose(q @ q.T, np.eye(4), atol=1e-12)
            dets.append(np.sign(np.linalg.det(q)))
        assert 5 < dets.count(1.0) < 35

    def test_noise_stays_within_its_bound_and_is_fresh_at_every_call(self):
        key = create_key(DisguisedNetsParams(noise=25.0), SHAPE)
        x = images()
        first, second = disguise(x, key), disguise(x, key)
        assert not torch.equal(first, second)
        delta = undisguise(first, key) - x.float()
        assert float(delta.min()) > -0.05 and float(delta.max()) < 25.05
        assert 11 < float(delta.mean()) < 14  # uniform on [0, 25]

    def test_a_noise_free_key_gives_the_same_output_every_time(self):
        key = create_key(DisguisedNetsParams(), SHAPE)
        x = images()
        assert torch.equal(disguise(x, key), disguise(x, key))
        assert torch.equal(disguise(x[2:4], key), disguise(x, key)[2:4])

    def test_float_images_in_unit_range_disguise_like_their_bytes(self):
        key = create_key(DisguisedNetsParams(), SHAPE)
        x = images()
        assert torch.allclose(disguise(x.float() / 127.5 - 1, key), disguise(x, key), atol=1e-3)


class TestAES:
    @pytest.mark.parametrize("per_block", [False, True])
    def test_undisguise_inverts_exactly(self, per_block):
        key = create_key(DisguisedNetsParams(method="aes", aes_key_per_block=per_block), SHAPE)
        x = images()
        y = disguise(x, key)
        assert y.dtype == torch.uint8 and y.shape == x.shape and not torch.equal(x, y)
        assert torch.equal(undisguise(y, key), x)

    def test_equal_units_give_equal_ciphertext_across_images_and_positions(self):
        key = create_key(DisguisedNetsParams(method="aes", permute=False), SHAPE)
        x = images(2)
        x[1, 4:8, 4:8] = x[0, 0:4, 0:4]  # one block (three 16-byte units) repeated elsewhere in another image
        blocks = to_blocks(disguise(x, key), (4, 4))
        assert torch.equal(blocks[1, 9], blocks[0, 0])
        per_block = create_key(DisguisedNetsParams(method="aes", permute=False, aes_key_per_block=True), SHAPE)
        blocks = to_blocks(disguise(x, per_block), (4, 4))
        assert not torch.equal(blocks[1, 9], blocks[0, 0])  # another position's key

    def test_matches_the_cryptography_packages_aes_on_one_unit(self):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        key = create_key(DisguisedNetsParams(method="aes", permute=False), SHAPE, seed=1)
        x = images(1)
        unit = x[0, 0:4, 0:4, 1].contiguous().numpy().tobytes()  # block 0, channel 1, row-major
        encryptor = Cipher(algorithms.AES(key.aes_keys[0].tobytes()), modes.ECB()).encryptor()
        expected = np.frombuffer(encryptor.update(unit) + encryptor.finalize(), dtype=np.uint8).reshape(4, 4)
        np.testing.assert_array_equal(disguise(x, key)[0, 0:4, 0:4, 1].numpy(), expected)

    @pytest.mark.parametrize("block, scale", [((4, 4), 8), ((2, 2), 2), ((2, 4), 4)])
    def test_scale_encrypts_each_pixel_as_an_f_by_f_cell_and_keeps_each_cells_mean(self, block, scale):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        key = create_key(DisguisedNetsParams(method="aes", block=block, permute=False, scale=scale), SHAPE, seed=3)
        x = images(2)
        y = disguise(x, key)
        # The same thing written out for one block of one channel: upsample, encrypt row-major units, cell means.
        r, s = block
        big = np.kron(x[1, 0:r, 0:s, 2].numpy(), np.ones((scale, scale), dtype=np.uint8))
        encryptor = Cipher(algorithms.AES(key.aes_keys[0].tobytes()), modes.ECB()).encryptor()
        cipher = np.frombuffer(encryptor.update(big.tobytes()) + encryptor.finalize(), dtype=np.uint8)
        means = cipher.reshape(r, scale, s, scale).astype(np.float64).mean(axis=(1, 3))
        np.testing.assert_array_equal(y[1, 0:r, 0:s, 2].numpy(), np.round(means).astype(np.uint8))
        with pytest.raises(InvalidInputError, match="cannot be undisguised") as caught:
            undisguise(y, key)
        assert caught.value.field == "scale"

    def test_at_scale_8_a_4x4_block_leaks_like_two_pixel_units(self):
        key = create_key(DisguisedNetsParams(method="aes", permute=False, scale=8), SHAPE, seed=4)
        x = images(1)
        x[0, 0, 0:2, 0] = torch.tensor([17, 200], dtype=torch.uint8)
        x[0, 5, 6:8, 0] = torch.tensor([17, 200], dtype=torch.uint8)  # the same pixel pair at another position
        y = disguise(x, key)
        assert torch.equal(y[0, 0, 0:2, 0], y[0, 5, 6:8, 0])


class TestKeys:
    def test_two_keys_differ_and_a_seed_reproduces_a_flagged_key(self):
        a, b = create_key(DisguisedNetsParams(), SHAPE), create_key(DisguisedNetsParams(), SHAPE)
        assert a.fingerprint() != b.fingerprint() and not a.seeded
        c, d = (create_key(DisguisedNetsParams(), SHAPE, seed=7) for _ in range(2))
        assert c.seeded and c.fingerprint() == d.fingerprint()
        assert np.array_equal(c.matrices, d.matrices) and np.array_equal(c.permutation, d.permutation)

    def test_repr_never_shows_the_material(self):
        key = create_key(DisguisedNetsParams(method="aes"), SHAPE, seed=2)
        text = repr(key)
        assert key.aes_keys[0].tobytes().hex() not in text and "aes_keys" not in text
        assert key.fingerprint()[:16] in text

    @pytest.mark.parametrize("change, shape, field, message", [
        ({"block": (5, 4)}, SHAPE, "block", "does not divide"),
        ({"method": "des"}, SHAPE, "method", "unknown method"),
        ({"matrix": "hadamard"}, SHAPE, "matrix", "unknown matrix"),
        ({"noise": -1.0}, SHAPE, "noise", r"noise must lie in \[0, 255\]"),
        ({"noise": float("nan")}, SHAPE, "noise", "noise must lie"),
        ({"method": "aes", "block": (2, 2)}, SHAPE, "block", "not a multiple of 16"),
        ({"method": "aes", "noise": 3.0}, SHAPE, "noise", "AES takes none"),
        ({"method": "aes", "block": (1, 2), "scale": 2}, SHAPE, "block", "scaled by 2 holds 8"),
        ({"method": "aes", "scale": 0}, SHAPE, "scale", r"scale must be an integer in \[1, 16\]"),
        ({"method": "aes", "scale": 17}, SHAPE, "scale", "scale must be"),
        ({"method": "aes", "salt_pepper": 0.7}, SHAPE, "salt_pepper", r"salt_pepper must lie in \[0, 0.5\]"),
        ({"scale": 2}, SHAPE, "scale", "scale is AES's"),
        ({"salt_pepper": 0.1}, SHAPE, "salt_pepper", "salt_pepper is AES's"),
        ({}, (32, 32), "shape", "expected an image shape"),
    ])
    def test_bad_parameters_name_their_field(self, change, shape, field, message):
        with pytest.raises(InvalidInputError, match=message) as caught:
            create_key(dataclasses.replace(DisguisedNetsParams(), **change), shape)
        assert caught.value.field == field

    def test_images_of_another_shape_are_refused(self):
        key = create_key(DisguisedNetsParams(), SHAPE)
        with pytest.raises(InvalidInputError, match=r"the key disguises images of \[32, 32, 3\]") as caught:
            disguise(images(2, shape=(28, 28, 1)), key)
        assert caught.value.field == "images.shape"


class TestTheRegisteredTransform:
    def test_noise_is_recorded_so_the_batch_keys_recompute_the_output(self):
        transform = get_transform("disguised_nets")
        params = DisguisedNetsParams(noise=50.0)
        key = transform.default_resources(params, SHAPE)
        x, labels = images(), torch.arange(6) % 3
        out = transform.encode(x, labels, params, num_classes=3, resources=key)
        assert out.keys.noise is not None and float(out.keys.noise.max()) <= 50.0
        assert torch.equal(transform.recompute(x, out, resources=key), out.encoded)
        assert torch.equal(out.labels, torch.nn.functional.one_hot(labels, 3).float())  # unmixed
        again = transform.encode(x, labels, params, num_classes=3, resources=key)
        assert not torch.equal(again.encoded, out.encoded) and not again.seeded
        seeded = [transform.encode(x, labels, params, num_classes=3, resources=key, seed=5) for _ in range(2)]
        assert seeded[0].seeded and torch.equal(seeded[0].encoded, seeded[1].encoded)

    def test_aes_output_holds_the_cipher_bytes(self):
        transform = get_transform("disguised_nets")
        params = DisguisedNetsParams(method="aes")
        key = transform.default_resources(params, SHAPE)
        x = images()
        out = transform.encode(x, torch.zeros(6, dtype=torch.int64), params, num_classes=1, resources=key,
                               out_dtype=torch.float16)
        assert out.encoded.dtype == torch.uint8 and torch.equal(out.encoded, disguise(x, key))
        assert torch.equal(undisguise(out.encoded, key), x)
        assert torch.equal(transform.recompute(x, out, resources=key), out.encoded)

    def test_salt_and_pepper_is_recorded_so_the_batch_keys_recompute_the_output(self):
        transform = get_transform("disguised_nets")
        params = DisguisedNetsParams(method="aes", salt_pepper=0.2)
        key = transform.default_resources(params, SHAPE)
        x = images()
        out = transform.encode(x, torch.zeros(6, dtype=torch.int64), params, num_classes=1, resources=key)
        assert torch.equal(transform.recompute(x, out, resources=key), out.encoded)
        noised = undisguise(out.encoded, key)  # the noise stays in: pixels hit are 0 or 255, the rest as they were
        codes = out.keys.noise.expand_as(x)
        assert torch.equal(noised[codes == 0], x[codes == 0])
        assert bool((noised[codes == 1] == 0).all()) and bool((noised[codes == 2] == 255).all())


def _loop_reference(x: np.ndarray, key) -> np.ndarray:
    """Block by block, channel by channel, as the papers describe it (and bench/encode.py's reference runs it)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    n, _, w, c = x.shape
    r, s = key.params.block
    columns = w // s
    out = np.empty(x.shape, np.float64 if key.params.method == "rmt" else np.uint8)
    for i in range(n):
        for position in range(key.positions):
            (y, col), (ty, tx) = divmod(position, columns), divmod(int(key.permutation[position]), columns)
            for channel in range(c):
                block = x[i, y * r:(y + 1) * r, col * s:(col + 1) * s, channel]
                if key.params.method == "rmt":
                    result = block @ key.matrices[position, channel if key.params.matrix_per_channel else 0]
                else:
                    aes_key = key.aes_keys[position if key.params.aes_key_per_block else 0]
                    encryptor = Cipher(algorithms.AES(aes_key.tobytes()), modes.ECB()).encryptor()
                    result = np.frombuffer(encryptor.update(block.tobytes()), np.uint8).reshape(r, s)
                out[i, ty * r:(ty + 1) * r, tx * s:(tx + 1) * s, channel] = result
    return out


@pytest.mark.parametrize("params", [
    DisguisedNetsParams(block=(2, 3)),
    DisguisedNetsParams(block=(4, 2), matrix="uniform", matrix_per_channel=True),
    DisguisedNetsParams(method="aes", block=(4, 4)),
    DisguisedNetsParams(method="aes", block=(4, 4), aes_key_per_block=True),
], ids=["rmt", "rmt-per-channel", "aes", "aes-per-block"])
def test_the_batched_disguise_equals_the_block_by_block_loop(params):
    x = images(3, shape=(8, 12, 2)).numpy()
    key = create_key(params, (8, 12, 2), seed=5)
    ours = disguise(torch.from_numpy(x), key).numpy()
    np.testing.assert_allclose(ours, _loop_reference(x, key), rtol=1e-5, atol=1e-3)
