"""The Encode stream over a real server on loopback: order, shapes, dtypes, keys, seeds, concurrency."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from instahide_client.instahide.v1 import instahide_pb2, tensor_pb2, transform_pb2
from instahide_client.tensors import to_numpy
from server_testlib import NUM_CLASSES, config, encode_all, encoded, images, ok, request


def reference_encoding(batch: np.ndarray, pool: np.ndarray | None, keys: instahide_pb2.InstaHideKeys) -> np.ndarray:
    """Recompute an encoding from its key record with numpy: e = σ ⊙ Σ λ_s x_s."""
    n = batch.shape[0]
    private = batch.reshape(n, -1).astype(np.float32) / np.float32(127.5) - np.float32(1)
    public = None if pool is None else pool.reshape(len(pool), -1).astype(np.float32) / np.float32(127.5) - 1
    coefficients, indices = to_numpy(keys.coefficients), to_numpy(keys.indices)
    mix = np.zeros_like(private)
    for slot in range(keys.k):
        source = private if slot < keys.private_per_mix else public
        mix += coefficients[:, slot : slot + 1] * source[indices[:, slot]]
    if keys.HasField("mask_bits"):
        bits = np.unpackbits(to_numpy(keys.mask_bits), axis=1, bitorder="little")[:, : mix.shape[1]]
        mix *= 1 - 2 * bits.astype(np.float32)
    return mix.reshape(batch.shape)


@pytest.fixture(scope="module")
def pool(small_pool_path) -> np.ndarray:
    return np.load(small_pool_path)


def test_responses_come_back_in_order_with_their_ids(server):
    sizes = [2, 9, 3, 16, 5, 2, 31, 8, 4, 7, 12, 6, 2, 3, 10, 8, 5, 2, 17, 4]
    requests = [request(f"req-{i}", images(n, seed=i), cfg=config() if i == 0 else None)
                for i, n in enumerate(sizes)]
    responses = encode_all(server.target, requests)
    assert [r.request_id for r in responses] == [f"req-{i}" for i in range(len(sizes))]
    for n, response in zip(sizes, responses, strict=True):
        ok(response)
        assert response.encoded.dtype == tensor_pb2.DATA_TYPE_FLOAT32
        assert list(response.encoded.shape) == [n, 32, 32, 3]
        assert response.labels.dtype == tensor_pb2.DATA_TYPE_FLOAT32
        assert list(response.labels.shape) == [n, NUM_CLASSES]
        assert np.abs(encoded(response)).max() <= 1.0
        assert not response.HasField("instahide_keys") and not response.seeded


def test_float16_output(server):
    (response,) = encode_all(server.target, [request("h", cfg=config(output_dtype=tensor_pb2.DATA_TYPE_FLOAT16))])
    values = encoded(response)
    assert response.encoded.dtype == tensor_pb2.DATA_TYPE_FLOAT16 and values.dtype == np.float16
    assert values.shape == (8, 32, 32, 3) and np.isfinite(values).all() and np.abs(values).max() <= 1.0


def test_float_images_in(server):
    batch = images(6).astype(np.float32) / 127.5 - 1
    for dtype in (np.float32, np.float16):
        (response,) = encode_all(server.target, [request("f", batch.astype(dtype), cfg=config())])
        assert encoded(response).shape == (6, 32, 32, 3)


def test_keys_only_when_asked_and_they_recompute_the_encoding(server, pool):
    batch = images(12, seed=3)
    without, with_keys = encode_all(server.target, [request("a", batch, cfg=config()),
                                                    request("b", batch, cfg=config(return_keys=True))])
    assert not ok(without).HasField("keys")
    keys = ok(with_keys).instahide_keys
    assert (keys.mode, keys.k, keys.private_per_mix) == (instahide_pb2.MIXING_MODE_CROSS, 6, 2)
    coefficients, indices = to_numpy(keys.coefficients), to_numpy(keys.indices)
    assert coefficients.shape == (12, 6) and coefficients.dtype == np.float32
    np.testing.assert_allclose(coefficients.sum(axis=1), 1.0, rtol=1e-5)
    assert coefficients.max() <= 0.65 + 1e-6 and (coefficients[:, :2].sum(axis=1) >= 0.3 - 1e-6).all()
    assert indices.shape == (12, 6) and indices.dtype == np.int64
    assert (indices[:, 0] == np.arange(12)).all() and (indices[:, 1] != np.arange(12)).all()
    assert indices[:, 2:].max() < len(pool)
    assert to_numpy(keys.mask_bits).shape == (12, 32 * 32 * 3 // 8)
    assert re.fullmatch(r"[0-9a-f]{64}", keys.pool_fingerprint) and not keys.seeded
    np.testing.assert_allclose(encoded(with_keys), reference_encoding(batch, pool, keys), atol=1e-5)


def test_mixed_labels_hold_the_private_coefficients(server):
    batch, labels = images(10, seed=4), [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    (response,) = encode_all(server.target, [request("m", batch, labels=labels, cfg=config(return_keys=True))])
    mixed = to_numpy(ok(response).labels)
    coefficients, indices = to_numpy(response.instahide_keys.coefficients), to_numpy(response.instahide_keys.indices)
    expected = np.zeros((10, NUM_CLASSES), np.float32)
    for row in range(10):
        for slot in range(2):
            expected[row, labels[indices[row, slot]]] += coefficients[row, slot]
    np.testing.assert_allclose(mixed, expected, atol=1e-6)


def test_inside_mode_and_no_sign_flip(server):
    batch = images(8, seed=5)
    cfg = config(mode=instahide_pb2.MIXING_MODE_INSIDE, sign_flip=False, return_keys=True)
    (response,) = encode_all(server.target, [request("i", batch, cfg=cfg)])
    keys = ok(response).instahide_keys
    assert (keys.mode, keys.k, keys.private_per_mix, keys.pool_fingerprint) == (
        instahide_pb2.MIXING_MODE_INSIDE, 4, 4, "")
    assert not keys.HasField("mask_bits")
    np.testing.assert_allclose(encoded(response), reference_encoding(batch, None, keys), atol=1e-5)


def test_seeded_only_with_a_seed_and_the_seed_reproduces(server):
    batch = images(8, seed=6)
    responses = encode_all(server.target, [
        request("plain-1", batch, cfg=config()),
        request("plain-2", batch, cfg=config()),
        request("seed-1", batch, cfg=config(seed=1234, return_keys=True)),
        request("seed-2", batch, cfg=config(seed=1234, return_keys=True)),
        request("seed-3", batch, cfg=config(seed=1235)),
    ])
    plain_1, plain_2, seed_1, seed_2, seed_3 = (ok(r) for r in responses)
    assert not plain_1.seeded and not plain_2.seeded
    assert seed_1.seeded and seed_2.seeded and seed_3.seeded and seed_1.instahide_keys.seeded
    assert plain_1.encoded.content != plain_2.encoded.content
    assert seed_1.encoded.content == seed_2.encoded.content
    assert seed_1.labels.content == seed_2.labels.content
    assert seed_1.encoded.content != seed_3.encoded.content


def test_a_seeded_stream_never_repeats_keys_and_replays_exactly(server):
    batch = images(8, seed=9)

    def seeded_stream() -> list[bytes]:
        requests = [request(f"s-{i}", batch, cfg=config(seed=77) if i == 0 else None) for i in range(3)]
        return [ok(r).encoded.content for r in encode_all(server.target, requests)]

    first, second = seeded_stream(), seeded_stream()
    assert len(set(first)) == 3  # batches under one seeded config get keys of (seed, i)
    assert first == second


def test_concurrent_streams_all_complete(server):
    results: dict[int, list[transform_pb2.EncodeResponse]] = {}
    failures: list[BaseException] = []

    def run(stream: int) -> None:
        try:
            requests = [request(f"{stream}-{i}", images(4 + i, seed=stream * 100 + i),
                                cfg=config() if i == 0 else None) for i in range(8)]
            results[stream] = encode_all(server.target, requests)
        except BaseException as exc:  # surfaced in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    for stream in range(6):
        responses = results[stream]
        assert [r.request_id for r in responses] == [f"{stream}-{i}" for i in range(8)]
        assert [encoded(r).shape[0] for r in responses] == [4 + i for i in range(8)]


def test_a_large_batch_fits_the_default_limits(server):
    batch = images(2048, seed=7)
    (response,) = encode_all(server.target, [request("big", batch, cfg=config())], timeout=120)
    values = encoded(response)
    assert values.shape == (2048, 32, 32, 3) and values.dtype == np.float32
    assert response.ByteSize() > 24 * (1 << 20)
