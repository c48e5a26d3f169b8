"""InstaHideClient against the real server (the session's `server` fixture)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from instahide_client import EncodeBatch, InstaHideClient, InstaHideError, encode_config

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def client(server):
    with InstaHideClient(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(48, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=48)
    return images, labels


def _signed_mix(images, pool, keys, i_rows=None):
    """Σ_j λ_ij · x_{idx_ij} on [-1, 1] images: private slots from the batch, the rest from the pool."""
    x = images.astype(np.float64) / 127.5 - 1.0
    p = pool.astype(np.float64) / 127.5 - 1.0
    ppm = keys.private_per_mix
    mix = np.zeros(x.shape, np.float64)
    for j in range(keys.k):
        source = x if j < ppm else p
        mix += keys.coefficients[:, j, None, None, None] * source[keys.indices[:, j]]
    return mix


class TestEncode:
    @pytest.mark.parametrize("dtype", ["float32", "float16"])
    def test_shapes_and_dtypes(self, client, data, dtype):
        images, labels = data
        out = client.encode(images, labels, batch_size=16, output_dtype=dtype)
        assert out.encoded.shape == images.shape
        assert out.encoded.dtype == np.dtype(dtype)
        assert out.mixed_labels.shape == (len(images), NUM_CLASSES)
        assert out.mixed_labels.dtype == np.float32
        assert out.keys is None and not out.seeded
        assert np.isfinite(out.encoded).all()
        assert np.abs(out.encoded.astype(np.float32)).max() <= 1.0 + 1e-3  # a convex mix of [-1, 1]

    def test_num_classes_inferred_over_whole_array(self, client, data):
        images, _ = data
        labels = np.zeros(len(images), np.int64)
        labels[-1] = 12  # only in the last batch
        out = client.encode(images, labels, batch_size=16)
        assert out.mixed_labels.shape == (len(images), 13)

    def test_keys_only_when_asked(self, client, data):
        images, labels = data
        (plain,) = client.encode_stream([(images[:8], labels[:8])], num_classes=NUM_CLASSES)
        assert plain.keys is None
        (keyed,) = client.encode_stream([(images[:8], labels[:8])], num_classes=NUM_CLASSES,
                                        return_keys=True)
        keys = keyed.keys
        assert keys is not None
        assert (keys.mode, keys.k, keys.private_per_mix) == ("cross", 6, 2)
        assert keys.coefficients.shape == (8, 6) and keys.coefficients.dtype == np.float32
        assert keys.indices.shape == (8, 6) and keys.indices.dtype == np.int64
        assert keys.mask_bits.shape == (8, 32 * 32 * 3 // 8) and keys.mask_bits.dtype == np.uint8
        assert len(keys.pool_fingerprint) == 64 and not keys.seeded

    def test_mixed_labels_carry_private_mass(self, client, data):
        images, labels = data
        out = client.encode(images, labels, batch_size=16, return_keys=True)
        keys = out.keys
        ppm = keys.private_per_mix
        assert (out.mixed_labels >= 0).all()
        np.testing.assert_allclose(out.mixed_labels.sum(1), keys.coefficients[:, :ppm].sum(1), atol=1e-5)
        np.testing.assert_allclose(keys.coefficients.sum(1), 1.0, atol=1e-5)
        assert (keys.coefficients[:, :ppm].sum(1) >= 0.3 - 1e-6).all()
        assert (keys.coefficients <= 0.65 + 1e-6).all()
        # each private coefficient sits at its image's class
        expected = np.zeros_like(out.mixed_labels)
        for j in range(ppm):
            np.add.at(expected, (np.arange(len(images)), labels[keys.indices[:, j]]), keys.coefficients[:, j])
        np.testing.assert_allclose(out.mixed_labels, expected, atol=1e-6)

    def test_recompute_from_keys(self, client, data, small_pool_path):
        images, labels = data
        pool = np.load(small_pool_path)
        (batch,) = client.encode_stream([(images[:16], labels[:16])], num_classes=NUM_CLASSES,
                                        return_keys=True)
        keys = batch.keys
        n = 16
        np.testing.assert_array_equal(keys.indices[:, 0], np.arange(n))  # slot 0: the image itself
        assert (keys.indices[:, 1] != np.arange(n)).all()  # never its own partner
        assert ((keys.indices[:, :2] >= 0) & (keys.indices[:, :2] < n)).all()
        assert ((keys.indices[:, 2:] >= 0) & (keys.indices[:, 2:] < len(pool))).all()
        mix = _signed_mix(images[:16], pool, keys)
        np.testing.assert_allclose(np.abs(batch.encoded), np.abs(mix), atol=1e-5)
        bits = np.unpackbits(keys.mask_bits, axis=1, count=32 * 32 * 3, bitorder="little")
        signs = (1.0 - 2.0 * bits).reshape(mix.shape)
        np.testing.assert_allclose(batch.encoded, signs * mix, atol=1e-5)
        np.testing.assert_array_equal(keys.signs((32, 32, 3)), signs)  # the client's own helper agrees

    def test_recompute_whole_encode_with_global_indices(self, client, data, small_pool_path):
        images, labels = data
        out = client.encode(images, labels, batch_size=16, return_keys=True)
        mix = _signed_mix(images, np.load(small_pool_path), out.keys)
        np.testing.assert_allclose(out.encoded, out.keys.signs((32, 32, 3)) * mix, atol=1e-5)

    def test_without_sign_flip(self, client, data, small_pool_path):
        images, labels = data
        out = client.encode(images[:8], labels[:8], sign_flip=False, return_keys=True)
        assert out.keys.mask_bits is None
        np.testing.assert_allclose(out.encoded, _signed_mix(images[:8], np.load(small_pool_path), out.keys),
                                   atol=1e-5)

    def test_inside_mode(self, client, data):
        images, labels = data
        out = client.encode(images[:16], labels[:16], mode="inside", return_keys=True)
        keys = out.keys
        assert (keys.mode, keys.k, keys.private_per_mix) == ("inside", 4, 4)
        assert ((keys.indices >= 0) & (keys.indices < 16)).all()
        np.testing.assert_allclose(out.mixed_labels.sum(1), 1.0, atol=1e-5)
        mix = _signed_mix(images[:16], np.zeros((1, 32, 32, 3), np.uint8), keys)
        np.testing.assert_allclose(out.encoded, keys.signs((32, 32, 3)) * mix, atol=1e-5)

    def test_fresh_keys_every_call(self, client, data):
        images, labels = data
        a = client.encode(images[:8], labels[:8])
        b = client.encode(images[:8], labels[:8])
        assert not np.allclose(a.encoded, b.encoded)

    def test_seed_is_reproducible_and_flagged(self, client, data):
        images, labels = data
        a = client.encode(images, labels, batch_size=16, seed=1234, return_keys=True)
        b = client.encode(images, labels, batch_size=16, seed=1234, return_keys=True)
        assert a.seeded and a.keys.seeded
        np.testing.assert_array_equal(a.encoded, b.encoded)

    def test_float_inputs(self, client, data):
        images, labels = data
        scaled = (images[:8].astype(np.float32) / 127.5 - 1.0)
        out = client.encode(scaled, labels[:8], mode="inside", return_keys=True)
        mix = _signed_mix(images[:8], np.zeros((1, 32, 32, 3), np.uint8), out.keys)
        np.testing.assert_allclose(out.encoded, out.keys.signs((32, 32, 3)) * mix, atol=1e-5)

    def test_progress_counts_images(self, client, data):
        images, labels = data
        seen = []
        client.encode(images, labels, batch_size=20, progress=seen.append)
        assert seen == [20, 20, 8]

    def test_single_last_image_joins_previous_batch(self, client, data):
        images, labels = data
        seen = []
        out = client.encode(images[:33], labels[:33], batch_size=16, progress=seen.append, return_keys=True)
        assert seen == [16, 17]
        assert out.encoded.shape == (33, 32, 32, 3)
        assert (out.keys.indices[16:, :2] >= 16).all()

    def test_large_batch_beyond_grpc_default_limit(self, client):
        # 1024 float32 32×32×3 encodings are 12.6 MB, past gRPC's 4 MiB default.
        images = np.zeros((1024, 32, 32, 3), np.uint8)
        out = client.encode(images, np.zeros(1024, np.int64), num_classes=2, mode="inside")
        assert out.encoded.shape == (1024, 32, 32, 3)

    def test_small_client_limit_is_resource_exhausted(self, server):
        with InstaHideClient(server.target, max_message_bytes=1 << 20) as small, \
                pytest.raises(InstaHideError) as info:
            small.encode(np.zeros((512, 32, 32, 3), np.uint8), np.zeros(512, np.int64), num_classes=2)
        assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


class TestEncodeStream:
    def test_order_and_ids_across_many_batches(self, client, data):
        images, labels = data
        batches = [EncodeBatch(images[: i + 2], labels[: i + 2], request_id=f"batch-{i}") for i in range(20)]
        results = list(client.encode_stream(batches, num_classes=NUM_CLASSES, max_in_flight=3))
        assert [r.request_id for r in results] == [f"batch-{i}" for i in range(20)]
        assert [len(r.encoded) for r in results] == list(range(2, 22))

    def test_auto_ids(self, client, data):
        images, labels = data
        results = list(client.encode_stream(((images[:4], labels[:4]) for _ in range(5)),
                                            num_classes=NUM_CLASSES))
        assert [r.request_id for r in results] == ["0", "1", "2", "3", "4"]

    def test_ready_config(self, client, data):
        images, labels = data
        config = encode_config(num_classes=NUM_CLASSES, output_dtype="float16", return_keys=True)
        (result,) = client.encode_stream([(images[:4], labels[:4])], config=config)
        assert result.encoded.dtype == np.float16 and result.keys is not None

    def test_sends_lazily_with_bounded_outstanding(self, client, data):
        images, labels = data
        pulled = 0

        def batches():
            nonlocal pulled
            for _ in range(30):
                pulled += 1
                yield images[:4], labels[:4]

        outstanding = []
        for consumed, _ in enumerate(client.encode_stream(batches(), num_classes=NUM_CLASSES,
                                                          max_in_flight=2), start=1):
            time.sleep(0.002)
            outstanding.append(pulled - consumed)
        assert len(outstanding) == 30
        assert max(outstanding) <= 2

    def test_bad_item_raises_invalid_argument(self, client, data):
        images, labels = data
        bad = [(images[:4], labels[:4]), (images[:4], labels[:4] + 100), (images[:4], labels[:4])]
        with pytest.raises(InstaHideError) as info:
            list(client.encode_stream(bad, num_classes=NUM_CLASSES))
        err = info.value
        assert err.code is grpc.StatusCode.INVALID_ARGUMENT
        assert err.request_id == "1"
        assert "label" in err.details.lower()

    def test_bad_item_yielded_and_stream_goes_on(self, client, data):
        images, labels = data
        bad = [(images[:4], labels[:4]), (images[:4], labels[:4] + 100), (images[:4], labels[:4])]
        results = list(client.encode_stream(bad, num_classes=NUM_CLASSES, on_error="yield"))
        assert [r.request_id for r in results] == ["0", "1", "2"]
        assert results[0].error is None and results[2].error is None
        assert results[2].encoded.shape == (4, 32, 32, 3)
        assert results[1].error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert results[1].encoded is None

    def test_bad_config_is_invalid_argument_naming_field(self, client, data):
        images, labels = data
        with pytest.raises(InstaHideError) as info:
            list(client.encode_stream([(images[:4], labels[:4])], num_classes=NUM_CLASSES, k=40))
        assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.field == "config.instahide.k"

    def test_malformed_batch_mid_stream_is_value_error_after_earlier_results(self, client, data):
        images, labels = data
        batches = [(images[:4], labels[:4]), (images[:4, 0], labels[:4]), (images[:4], labels[:4])]
        got = []
        with pytest.raises(ValueError, match=r"images must have shape \(N, H, W, C\)"):
            for result in client.encode_stream(batches, num_classes=NUM_CLASSES):
                got.append(result.request_id)
        assert got == ["0"]

    def test_break_early_cancels_and_client_still_works(self, client, data):
        images, labels = data

        def endless():
            while True:
                yield images[:4], labels[:4]

        start = time.monotonic()
        with client.encode_stream(endless(), num_classes=NUM_CLASSES) as stream:
            for i, _ in enumerate(stream):
                if i == 3:
                    break
        assert time.monotonic() - start < 10
        assert list(stream) == []  # cancelled: iteration simply stops
        assert len(client.encode(images[:4], labels[:4]).encoded) == 4

    def test_dropped_stream_is_cancelled(self, client, data):
        images, labels = data
        closed = threading.Event()

        def endless():
            try:
                while True:
                    yield images[:4], labels[:4]
            finally:
                closed.set()  # runs once the sending side lets go of this iterable

        for i, _ in enumerate(client.encode_stream(endless(), num_classes=NUM_CLASSES)):
            if i == 3:
                break  # no with, no cancel(): dropping the stream must end the call
        assert closed.wait(10)

    def test_deadline(self, client, data):
        images, labels = data
        with pytest.raises(InstaHideError) as info:
            list(client.encode_stream([(images, labels)] * 50, num_classes=NUM_CLASSES, timeout=0.001))
        assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED

    def test_options_checked_before_the_call(self, client):
        with pytest.raises(ValueError, match="num_classes is required"):
            client.encode_stream([])
        with pytest.raises(ValueError, match="unknown on_error"):
            client.encode_stream([], num_classes=2, on_error="ignore")
        with pytest.raises(ValueError, match="either config or keyword options"):
            client.encode_stream([], config=encode_config(num_classes=2), mode="inside")


class TestHealthAndTransport:
    def test_health_serving(self, client):
        assert client.health() == "SERVING"
        assert client.health("instahide.v1.TransformService") == "SERVING"

    def test_health_unknown_service(self, client):
        with pytest.raises(InstaHideError) as info:
            client.health("no.such.Service")
        assert info.value.code is grpc.StatusCode.NOT_FOUND
        assert info.value.details.startswith("service: no health status for 'no.such.Service'")

    def test_health_unknown_service_on_a_stock_health_server(self):
        """grpc's own health servicer answers NOT_FOUND with no message; the client supplies one."""
        health = pytest.importorskip("grpc_health.v1.health")
        health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            with InstaHideClient(f"127.0.0.1:{port}") as stock, pytest.raises(InstaHideError) as info:
                stock.health("no.such.Service")
        finally:
            server.stop(None)
        assert info.value.code is grpc.StatusCode.NOT_FOUND
        assert info.value.details == "the server has no health status for service 'no.such.Service'"

    def test_unreachable_target(self, data, free_target):
        images, labels = data
        with InstaHideClient(free_target) as c:
            with pytest.raises(InstaHideError) as info:
                c.encode(images[:4], labels[:4], timeout=20)
            assert info.value.code is grpc.StatusCode.UNAVAILABLE
            with pytest.raises(InstaHideError) as info:
                c.health()
            assert info.value.code is grpc.StatusCode.UNAVAILABLE
            assert info.value.__cause__ is None and info.value.__suppress_context__


class TestAuth:
    @pytest.mark.parametrize("token", [None, "wrong-token"])
    def test_wrong_token_unauthenticated(self, secured, data, token):
        images, labels = data
        with InstaHideClient(secured.target, token=token) as c, pytest.raises(InstaHideError) as info:
            c.encode(images[:4], labels[:4])
        assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
        assert "s3cret-token" not in str(info.value)

    def test_right_token(self, secured, secured_token, data):
        images, labels = data
        with InstaHideClient(secured.target, token=secured_token) as c:
            assert c.encode(images[:4], labels[:4]).encoded.shape == (4, 32, 32, 3)
            assert c.health() == "SERVING"

    def test_health_open_without_token(self, secured):
        with InstaHideClient(secured.target) as c:
            assert c.health() == "SERVING"


def test_a_channels_first_batch_is_refused_with_a_hint_before_any_pool_is_cut(client, server):
    with pytest.raises(InstaHideError) as caught:
        client.encode(np.zeros((4, 3, 40, 40), np.uint8), np.arange(4), num_classes=4)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "images.shape" in caught.value.details and "looks like channels first (NCHW)" in caught.value.details
    assert "[3, 40, 40]" not in server.log_path.read_text()  # no pool was built for the shape
    out = client.encode(np.zeros((4, 40, 40, 3), np.uint8), np.arange(4), num_classes=4)  # the stream goes on
    assert out.encoded.shape == (4, 40, 40, 3)


def test_a_request_over_the_message_limit_says_what_to_do(server):
    with InstaHideClient(server.target, max_message_bytes=1 << 20) as small, \
            pytest.raises(InstaHideError) as caught:
        small.encode(np.zeros((8, 256, 256, 3), np.uint8), np.arange(8), num_classes=8, batch_size=8)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "batch_size / --batch-size" in caught.value.details, caught.value.details
