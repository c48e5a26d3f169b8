"""Result types: decoding responses, the key record, the out.npz layout (no server needed)."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from instahide_client import EncodedBatch, EncodeOutput, KeyRecord
from instahide_client._types import concatenate_keys
from instahide_client.instahide.v1 import instahide_pb2, transform_pb2
from instahide_client.tensors import to_tensor


def _key_proto(n=3, k=4, ppm=2, hwc=(2, 2, 3), sign_flip=True, rng=None):
    rng = rng or np.random.default_rng(0)
    coefficients = rng.random((n, k)).astype(np.float32)
    indices = rng.integers(0, 10, size=(n, k)).astype(np.int64)
    msg = instahide_pb2.InstaHideKeys(mode=instahide_pb2.MIXING_MODE_CROSS, k=k, private_per_mix=ppm,
                                  coefficients=to_tensor(coefficients), indices=to_tensor(indices),
                                  seeded=True, pool_fingerprint="ab" * 32)
    bits = None
    if sign_flip:
        bits = rng.integers(0, 256, size=(n, -(-int(np.prod(hwc)) // 8)), dtype=np.uint8)
        msg.mask_bits.CopyFrom(to_tensor(bits))
    return msg, coefficients, indices, bits


class TestKeyRecord:
    def test_from_proto(self):
        msg, coefficients, indices, bits = _key_proto()
        rec = KeyRecord.from_proto(msg)
        np.testing.assert_array_equal(rec.coefficients, coefficients)
        np.testing.assert_array_equal(rec.indices, indices)
        np.testing.assert_array_equal(rec.mask_bits, bits)
        assert rec.coefficients.dtype == np.float32 and rec.indices.dtype == np.int64
        assert rec.mask_bits.dtype == np.uint8
        assert (rec.mode, rec.k, rec.private_per_mix, rec.seeded) == ("cross", 4, 2, True)
        assert rec.pool_fingerprint == "ab" * 32

    def test_no_sign_flip_has_no_mask(self):
        rec = KeyRecord.from_proto(_key_proto(sign_flip=False)[0])
        assert rec.mask_bits is None
        np.testing.assert_array_equal(rec.signs((2, 2, 3)), np.ones((3, 2, 2, 3), np.float32))

    def test_empty_mask_tensor_is_no_mask(self):
        msg = _key_proto(sign_flip=False)[0]
        msg.mask_bits.CopyFrom(to_tensor(np.zeros((3, 0), np.uint8)))
        assert KeyRecord.from_proto(msg).mask_bits is None

    def test_inside_mode_name(self):
        msg = _key_proto()[0]
        msg.mode = instahide_pb2.MIXING_MODE_INSIDE
        assert KeyRecord.from_proto(msg).mode == "inside"

    def test_signs_little_endian_bit_one_negative(self):
        # element 0 ↔ bit 0 (least significant) of byte 0; 12 elements → 2 bytes
        bits = np.array([[0b0000_0101, 0b0000_1000]], dtype=np.uint8)
        rec = KeyRecord(np.ones((1, 1), np.float32), np.zeros((1, 1), np.int64), bits, "cross", 1, 1,
                        False, "")
        signs = rec.signs((2, 2, 3)).reshape(-1)
        expected = np.ones(12, np.float32)
        expected[[0, 2, 11]] = -1
        np.testing.assert_array_equal(signs, expected)

    def test_arrays_layout(self):
        rec = KeyRecord.from_proto(_key_proto()[0])
        arrays = rec.arrays()
        assert set(arrays) == {"keys_coefficients", "keys_indices", "keys_mask_bits", "keys_mode", "keys_k",
                               "keys_private_per_mix", "keys_seeded", "keys_pool_fingerprint"}
        assert arrays["keys_mode"].shape == () and str(arrays["keys_mode"]) == "cross"
        assert int(arrays["keys_k"]) == 4 and int(arrays["keys_private_per_mix"]) == 2
        assert bool(arrays["keys_seeded"]) is True
        assert "keys_mask_bits" not in KeyRecord.from_proto(_key_proto(sign_flip=False)[0]).arrays()


class TestConcatenateKeys:
    def test_private_indices_shift_by_offset_public_do_not(self):
        recs = [KeyRecord.from_proto(_key_proto(rng=np.random.default_rng(s))[0]) for s in range(3)]
        joined = concatenate_keys(recs, [0, 3, 6])
        assert joined.coefficients.shape == (9, 4) and joined.mask_bits.shape == (9, 2)
        for i, (rec, offset) in enumerate(zip(recs, [0, 3, 6], strict=True)):
            rows = slice(3 * i, 3 * i + 3)
            np.testing.assert_array_equal(joined.indices[rows, :2], rec.indices[:, :2] + offset)
            np.testing.assert_array_equal(joined.indices[rows, 2:], rec.indices[:, 2:])
            np.testing.assert_array_equal(joined.coefficients[rows], rec.coefficients)

    def test_disagreeing_records_raise(self):
        a = KeyRecord.from_proto(_key_proto()[0])
        msg = _key_proto()[0]
        msg.pool_fingerprint = "cd" * 32
        with pytest.raises(ValueError, match="pool_fingerprint"):
            concatenate_keys([a, KeyRecord.from_proto(msg)], [0, 3])


class TestEncodedBatch:
    def test_from_proto_result(self):
        encoded = np.full((2, 2, 2, 3), 0.5, np.float16)
        labels = np.array([[0.6, 0.1], [0.0, 0.7]], np.float32)
        msg = transform_pb2.EncodeResponse(request_id="9", encoded=to_tensor(encoded),
                                           labels=to_tensor(labels), seeded=True)
        batch = EncodedBatch.from_proto(msg)
        assert batch.request_id == "9" and batch.seeded and batch.error is None and batch.keys is None
        assert batch.encoded.dtype == np.float16
        np.testing.assert_array_equal(batch.mixed_labels, labels)

    def test_from_proto_error(self):
        msg = transform_pb2.EncodeResponse(request_id="4", error=transform_pb2.ItemError(
            code=3, message="labels has 3 values for 4 images", field="labels"))
        batch = EncodedBatch.from_proto(msg)
        assert batch.encoded is None and batch.mixed_labels is None
        assert batch.error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert (batch.error.field, batch.error.request_id) == ("labels", "4")


class TestEncodeOutputNpz:
    def test_npz_round_trip_without_pickle(self):
        rec = KeyRecord.from_proto(_key_proto()[0])
        out = EncodeOutput(np.zeros((3, 2, 2, 3), np.float32), np.zeros((3, 5), np.float32), rec, True)
        buffer = io.BytesIO()
        np.savez(buffer, **out.arrays())
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as data:
            assert set(data.files) == {"encoded", "labels", *rec.arrays()}
            assert data["labels"].shape == (3, 5)
            assert str(data["keys_mode"]) == "cross"
            assert str(data["keys_pool_fingerprint"]) == "ab" * 32

    def test_without_keys(self):
        out = EncodeOutput(np.zeros((1, 2, 2, 3), np.float32), np.zeros((1, 5), np.float32))
        assert set(out.arrays()) == {"encoded", "labels"}
