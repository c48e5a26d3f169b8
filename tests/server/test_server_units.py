"""In-process units: config precedence, the hand-written wire format, the pool registry, the error
interceptor."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import grpc
import numpy as np
import pytest
import torch
from instahide_client.instahide.v1 import instahide_pb2, transform_pb2
from instahide_client.tensors import to_tensor
from instahide_server.__main__ import build_parser
from instahide_server.config import ConfigError, ServerConfig
from instahide_server.errors import FailedPrecondition, InvalidArgument, Status
from instahide_server.interceptors.errors import ErrorInterceptor
from instahide_server.transform import pools, wire
from instahide_server.transform.pools import PoolRegistry

from instahide_ops.audits.reconstruction import AttackSettings
from instahide_ops.audits.reconstruction.instahide.self_refine import RefinementConfig
from instahide_ops.errors import InvalidInputError
from instahide_ops.photos import BUNDLED_SOURCE_NAMES, bundled_sources
from instahide_ops.transforms.instahide.pool import build_pool, default_pool


def _config(argv: list[str], env: dict[str, str]) -> ServerConfig:
    return ServerConfig.from_args_and_env(build_parser().parse_args(argv), env)


class TestConfig:
    def test_defaults(self):
        config = _config([], {})
        transport = config.transport
        assert (transport.host, transport.port, config.device, config.transforms.pool, transport.tokens) == (
            "127.0.0.1", 50051, "auto", None, None)
        assert transport.max_message_bytes == 64 << 20 and config.transforms.max_in_flight_per_stream == 4
        assert transport.stream_window_bytes == 4 << 20

    def test_flag_wins_over_env_and_env_over_default(self):
        env = {"INSTAHIDE_PORT": "6000", "INSTAHIDE_MAX_IMAGES_PER_REQUEST": "7", "INSTAHIDE_HOST": "0.0.0.0",
               "INSTAHIDE_GRACE_SECONDS": "2.5", "INSTAHIDE_LOG_LEVEL": "debug"}
        config = _config(["--port", "7000"], env)
        assert config.transport.port == 7000 and config.transforms.max_images_per_request == 7
        assert config.transport.host == "0.0.0.0"
        assert config.grace_seconds == 2.5 and config.log_level == "DEBUG"
        # gRPC's own window
        assert _config([], {"INSTAHIDE_STREAM_WINDOW_BYTES": "0"}).transport.stream_window_bytes == 0

    def test_token_sources(self, tmp_path):
        token_file = tmp_path / "token"
        token_file.write_text("from-file\n")
        assert _config([], {"INSTAHIDE_TOKEN": "from-env"}).transport.tokens == {"default": "from-env"}
        from_file = _config(["--token-file", str(token_file)], {"INSTAHIDE_TOKEN": "from-env"})
        assert from_file.transport.tokens == {"default": "from-file"}
        assert _config([], {"INSTAHIDE_TOKEN_FILE": str(token_file)}).transport.tokens == {"default": "from-file"}
        assert "from-file" not in repr(_config(["--token-file", str(token_file)], {}))

    def test_pool_size(self):
        assert _config([], {}).transforms.pool_size is None
        assert _config(["--pool-photos", "photos"], {"INSTAHIDE_POOL_SIZE": "64"}).transforms.pool_size == 64

    def test_audit_refinement_is_off_unless_asked_for(self):
        audits = _config([], {}).audits
        assert (audits.refine_sets, audits.refine_steps) == (0, RefinementConfig.steps)  # the library's default
        audits = _config(["--audit-refine-sets", "2"], {"INSTAHIDE_AUDIT_REFINE_STEPS": "300"}).audits
        assert (audits.refine_sets, audits.refine_steps) == (2, 300)

    def test_audit_pool_memory(self):
        assert _config([], {}).audits.pool_memory_bytes == AttackSettings.working_bytes  # the library's default
        assert _config([], {"INSTAHIDE_AUDIT_POOL_MEMORY_MIB": "256"}).audits.pool_memory_bytes == 256 << 20
        assert _config(["--audit-pool-memory-mib", "64"], {}).audits.pool_memory_mib == 64

    def test_warm_shapes(self):
        assert _config([], {}).transforms.warm_shapes == ((32, 32, 3),)
        assert _config(["--warm-shapes", "24x40x3, 16x16x1"], {}).transforms.warm_shapes == ((24, 40, 3), (16, 16, 1))
        assert _config([], {"INSTAHIDE_WARM_SHAPES": "none"}).transforms.warm_shapes == ()

    @pytest.mark.parametrize(("argv", "env", "needle"), [
        (["--warm-shapes", "32x32"], {}, "--warm-shapes"),
        ([], {"INSTAHIDE_PORT": "http"}, "INSTAHIDE_PORT"),
        (["--port", "70000"], {}, r"--port: must be in \[0, 65535\], got 70000"),
        (["--device", "tpu"], {}, "--device: cannot use 'tpu': expected auto, cpu, cuda or cuda:N"),
        (["--max-in-flight-per-stream", "0"], {}, "--max-in-flight-per-stream: must be at least 1"),
        (["--stream-window-bytes", "1024"], {}, r"--stream-window-bytes: must be 0 or in \[65535, 2\*\*31\)"),
        (["--token-file", "/nonexistent/token"], {}, "token file"),
        ([], {"INSTAHIDE_LOG_LEVEL": "loud"}, "INSTAHIDE_LOG_LEVEL"),
        (["--pool", "pool.npy"], {"INSTAHIDE_POOL_PHOTOS": "photos"}, "--pool and --pool-photos"),
        (["--pool", "pool.npy", "--pool-size", "64"], {}, "--pool-size sizes a pool the server cuts"),
        ([], {"INSTAHIDE_POOL_SIZE": "0"}, "INSTAHIDE_POOL_SIZE: must be at least 1"),
        (["--audit-pool-memory-mib", "0"], {}, "--audit-pool-memory-mib: must be at least 1"),
        (["--audit-refine-sets", "-1"], {}, "--audit-refine-sets: must be at least 0"),
        ([], {"INSTAHIDE_AUDIT_REFINE_STEPS": "0"}, "INSTAHIDE_AUDIT_REFINE_STEPS: must be at least 1"),
        ([], {"INSTAHIDE_AUDIT_POOL_MEMORY_MIB": "1.5"}, "INSTAHIDE_AUDIT_POOL_MEMORY_MIB"),
    ])
    def test_bad_settings_name_their_source(self, argv, env, needle):
        with pytest.raises(ConfigError, match=needle):
            _config(argv, env)


class TestWire:
    @pytest.mark.parametrize("dtype", [np.float32, np.float16])
    def test_hand_written_response_parses_like_protobuf(self, dtype):
        array = np.random.default_rng(0).standard_normal((3, 4, 5, 2)).astype(dtype)
        rest = transform_pb2.EncodeResponse(labels=to_tensor(np.eye(3, dtype=np.float32)), seeded=True)
        expected = transform_pb2.EncodeResponse()
        expected.CopyFrom(rest)
        expected.request_id = "id-é"
        expected.encoded.CopyFrom(to_tensor(array))
        assert transform_pb2.EncodeResponse.FromString(wire.encode_response("id-é", array, rest)) == expected

    def test_large_content_length(self):
        array = np.zeros((1, 128, 128, 3), np.float32)  # a multi-byte varint length
        parsed = transform_pb2.EncodeResponse.FromString(wire.encode_response("x", array,
                                                                              transform_pb2.EncodeResponse()))
        assert len(parsed.encoded.content) == array.nbytes and list(parsed.encoded.shape) == [1, 128, 128, 3]

    def test_error_response(self):
        status = Status(grpc.StatusCode.INVALID_ARGUMENT, "labels: bad", "labels")
        parsed = transform_pb2.EncodeResponse.FromString(wire.error_response("r", status))
        assert (parsed.request_id, parsed.error.code, parsed.error.field) == ("r", 3, "labels")


class _CountingRegistry(PoolRegistry):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.builds: list[tuple[int, int, int]] = []

    def _build(self, shape):
        self.builds.append(shape)
        time.sleep(0.2)
        return super()._build(shape)


class TestPoolRegistry:
    source = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)

    def test_concurrent_requests_build_once(self):
        registry = _CountingRegistry(device=torch.device("cpu"), source=self.source)
        pools = []
        threads = [threading.Thread(target=lambda: pools.append(registry.get((8, 8, 3)))) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert registry.builds == [(8, 8, 3)] and len({id(pool) for pool in pools}) == 1

    def test_adapts_the_source_and_drops_the_least_recently_used(self):
        registry = _CountingRegistry(device=torch.device("cpu"), source=self.source, max_shapes=2)
        assert registry.get((4, 6, 1)).image_shape == (4, 6, 1)
        registry.get((8, 8, 3))
        registry.get((4, 6, 1))
        registry.get((16, 16, 3))  # drops (8, 8, 3)
        registry.get((4, 6, 1))
        registry.get((8, 8, 3))
        assert registry.builds == [(4, 6, 1), (8, 8, 3), (16, 16, 3), (8, 8, 3)]

    def test_unsupported_channels(self):
        registry = PoolRegistry(device=torch.device("cpu"), source=self.source)
        with pytest.raises(InvalidArgument) as caught:
            registry.get((8, 8, 4))
        assert caught.value.field == "images.shape"


@pytest.fixture(scope="module")
def photos():
    return list(bundled_sources(("china", "flower")).values())


class TestPoolRegistryFromPhotos:
    def test_cut_from_the_photos_at_a_seed_of_its_own(self, photos, caplog):
        caplog.set_level(logging.DEBUG)
        first = PoolRegistry(device=torch.device("cpu"), photos=photos)
        second = PoolRegistry(device=torch.device("cpu"), photos=photos)
        assert first.holds_photos and first.photos is not None and len(first.photos) == 2
        pool = first.get((32, 32, 3))
        # Exactly build_pool's cut of these photos, at a seed drawn for this registry and never logged.
        np.testing.assert_array_equal(pool.pixels.numpy(), build_pool(photos, seed=first._photo_seed))
        assert first._photo_seed != second._photo_seed
        assert str(first._photo_seed) not in caplog.text and str(second._photo_seed) not in caplog.text

    def test_pools_it_cuts_hold_the_size_asked_for(self, photos, tmp_path):
        cut = PoolRegistry(device=torch.device("cpu"), photos=photos, size=24).get((32, 32, 3))
        assert len(cut) == 24
        bundled = PoolRegistry(device=torch.device("cpu"), size=24, cache_dir=tmp_path).get((16, 16, 3))
        np.testing.assert_array_equal(bundled.pixels.numpy(), default_pool(16, 16, count=24, cache_dir=tmp_path))
        with pytest.raises(ValueError, match="as large as they are"):
            PoolRegistry(device=torch.device("cpu"), source=TestPoolRegistry.source, size=24)

    def test_photos_that_cannot_fill_the_pool_are_the_servers_fault(self):
        flat = [np.full((300, 300, 3), 128, dtype=np.uint8)]  # no crop of it has a keypoint
        registry = _CountingRegistry(device=torch.device("cpu"), photos=flat, size=4)
        with pytest.raises(FailedPrecondition, match=r"cannot cut a public pool of 4 images of 32x32 .*only 0 of 4 "
                                                     r"crops.*lower --pool-size") as first:
            registry.get((32, 32, 3))
        # The same answer again, without another 400 attempts: the photos and the seed have not changed.
        with pytest.raises(FailedPrecondition) as again:
            registry.get((32, 32, 3))
        assert str(again.value) == str(first.value) and registry.builds == [(32, 32, 3)]

    def test_a_bundled_pool_that_cannot_be_cut_names_only_the_pool_size(self, monkeypatch):
        # Only an absurd --pool-size fails on the bundled photos; the operator gave no --pool-photos to change.
        def too_few(height, width, *, count, cache_dir=None):
            raise InvalidInputError(f"only 7 of {count} crops have keypoints", field="count")

        monkeypatch.setattr(pools, "default_pool", too_few)
        with pytest.raises(FailedPrecondition, match=r"only 7 of 4096 crops.*can lower --pool-size$"):
            PoolRegistry(device=torch.device("cpu"), size=4096).get((32, 32, 3))

    def test_where_the_photos_come_from(self, photos):
        bundled = PoolRegistry(device=torch.device("cpu")).photos  # the default pool's: every bundled photo
        assert bundled is not None and len(bundled) == len(BUNDLED_SOURCE_NAMES)
        np.testing.assert_array_equal(bundled[0], bundled_sources(BUNDLED_SOURCE_NAMES[:1])[BUNDLED_SOURCE_NAMES[0]])
        images = PoolRegistry(device=torch.device("cpu"), source=TestPoolRegistry.source)
        assert not images.holds_photos and images.photos is None
        with pytest.raises(ValueError, match="not both"):
            PoolRegistry(device=torch.device("cpu"), source=TestPoolRegistry.source, photos=photos)


def test_error_interceptor_maps_domain_errors_and_hides_the_unexpected(caplog):
    async def unary_boom(request, context):
        raise RuntimeError("secret internal detail")

    async def stream_refuse(request_iterator, context):
        yield b"first"
        raise InvalidArgument("config.k: too big", "config.k")

    async def main() -> list[tuple[grpc.StatusCode, str | None, list[bytes]]]:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Errors", {
            "Boom": grpc.unary_unary_rpc_method_handler(unary_boom),
            "Refuse": grpc.stream_stream_rpc_method_handler(stream_refuse),
        }),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        outcomes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
                try:
                    await chan.unary_unary("/test.Errors/Boom")(b"x", timeout=10)
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((exc.code(), exc.details(), []))
                call = chan.stream_stream("/test.Errors/Refuse")(iter([b"x"]), timeout=10)
                received = []
                try:
                    async for message in call:
                        received.append(message)
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((exc.code(), exc.details(), received))
        finally:
            await server.stop(None)
        return outcomes

    boom, refuse = asyncio.run(main())
    assert boom[0] == grpc.StatusCode.INTERNAL and "secret" not in boom[1]
    assert "secret internal detail" in caplog.text  # the traceback goes to the log
    assert refuse == (grpc.StatusCode.INVALID_ARGUMENT, "config.k: too big", [b"first"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_encoder_on_cuda_matches_the_keys():
    from instahide_server.transform.encoder import BatchEncoder
    from instahide_server.transform.instahide import InstaHideFamily
    from instahide_server.transform.validation import Limits

    source = np.random.default_rng(2).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    device = torch.device("cuda")
    encoder = BatchEncoder(device=device, families=[InstaHideFamily(PoolRegistry(device=device, source=source))],
                           limits=Limits(max_images_per_request=1024, max_message_bytes=64 << 20))
    batch = np.random.default_rng(3).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    request = transform_pb2.EncodeRequest(request_id="gpu", images=to_tensor(batch), labels=[i % 10 for i in range(64)])
    cfg = transform_pb2.EncodeConfig(instahide=instahide_pb2.InstaHideConfig(num_classes=10, return_keys=True,
                                                                             sign_flip=False))
    response = transform_pb2.EncodeResponse.FromString(encoder.run(request, cfg).payload)
    assert not response.HasField("error"), response.error
    coefficients = np.frombuffer(response.instahide_keys.coefficients.content, np.float32).reshape(64, 6)
    indices = np.frombuffer(response.instahide_keys.indices.content, np.int64).reshape(64, 6)
    private = batch.reshape(64, -1).astype(np.float32) / np.float32(127.5) - 1
    public = source.reshape(32, -1).astype(np.float32) / np.float32(127.5) - 1
    expected = sum(coefficients[:, s : s + 1] * (private if s < 2 else public)[indices[:, s]] for s in range(6))
    got = np.frombuffer(response.encoded.content, np.float32).reshape(64, -1)
    np.testing.assert_allclose(got, expected, atol=1e-5)
