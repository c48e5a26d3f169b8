"""encode_config, input checks and request building (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest
from instahide_client import EncodeBatch, encode_config
from instahide_client._requests import batch_bounds, check_batch, make_request
from instahide_client.instahide.v1 import instahide_pb2, tensor_pb2


class TestEncodeConfig:
    def test_defaults_leave_service_defaults(self):
        outer = encode_config(num_classes=10)
        config = outer.instahide  # the transform: InstaHide
        assert outer.WhichOneof("transform") == "instahide" and config.num_classes == 10
        assert config.mode == instahide_pb2.MIXING_MODE_CROSS
        assert config.k == 0 and config.private_per_mix == 0  # 0 = the service's default
        assert not config.HasField("max_coefficient")
        assert not config.HasField("min_private_mass")
        assert not config.HasField("seed")
        assert config.HasField("sign_flip") and config.sign_flip
        assert outer.output_dtype == tensor_pb2.DATA_TYPE_FLOAT32
        assert not config.return_keys

    def test_every_option(self):
        outer = encode_config(num_classes=3, mode="inside", k=4, private_per_mix=2, max_coefficient=0.7,
                              min_private_mass=0.25, sign_flip=False, output_dtype="float16",
                              return_keys=True, seed=2**64 - 1)
        config = outer.instahide
        assert config.mode == instahide_pb2.MIXING_MODE_INSIDE
        assert (config.k, config.private_per_mix) == (4, 2)
        assert config.max_coefficient == pytest.approx(0.7)
        assert config.min_private_mass == pytest.approx(0.25)
        assert config.HasField("sign_flip") and not config.sign_flip
        assert outer.output_dtype == tensor_pb2.DATA_TYPE_FLOAT16
        assert config.return_keys
        assert config.HasField("seed") and config.seed == 2**64 - 1

    def test_seed_zero_is_sent(self):
        assert encode_config(num_classes=2, seed=0).instahide.HasField("seed")

    def test_numpy_dtype_accepted(self):
        assert encode_config(num_classes=2, output_dtype=np.float16).output_dtype == (
            tensor_pb2.DATA_TYPE_FLOAT16)

    def test_unknown_mode_lists_valid(self):
        with pytest.raises(ValueError, match=r"unknown mode 'mixed'; expected one of 'cross', 'inside'"):
            encode_config(num_classes=2, mode="mixed")

    @pytest.mark.parametrize("dtype", ["float64", "uint8", np.int32])
    def test_unknown_dtype_lists_valid(self, dtype):
        with pytest.raises(ValueError, match=r"unknown output_dtype .*expected one of 'float32', 'float16'"):
            encode_config(num_classes=2, output_dtype=dtype)

    @pytest.mark.parametrize(("option", "value", "message"), [
        ("num_classes", 0, "num_classes must be at least 1"),
        ("k", 0, "k must be at least 2"),
        ("k", 2**32, "k must fit in 32 bits"),
        ("private_per_mix", -1, "private_per_mix must be at least"),
        ("max_coefficient", 1.5, "max_coefficient must be in"),
        ("min_private_mass", -0.1, "min_private_mass must be in"),
        ("seed", -1, "seed must be in"),
        ("seed", 2**64, "seed must be in"),
    ])
    def test_out_of_range(self, option, value, message):
        kwargs = {"num_classes": 10, option: value}
        with pytest.raises(ValueError, match=message):
            encode_config(**kwargs)

    @pytest.mark.parametrize(("option", "value"), [("k", 2.5), ("seed", "7"), ("num_classes", True)])
    def test_wrong_type(self, option, value):
        kwargs = {"num_classes": 10, option: value}
        with pytest.raises(TypeError, match=f"{option} must be an int"):
            encode_config(**kwargs)


def _images(n=4, dtype=np.uint8):
    return np.zeros((n, 8, 8, 3), dtype=dtype)


class TestCheckBatch:
    @pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float16])
    def test_accepts_image_dtypes(self, dtype):
        images, labels = check_batch(_images(dtype=dtype), [0, 1, 2, 3])
        assert images.dtype == dtype and labels.shape == (4,)

    @pytest.mark.parametrize(("images", "labels", "message"), [
        (np.zeros((4, 8, 8), np.uint8), np.arange(4),
         r"images must have shape \(N, H, W, C\), got shape \(4, 8, 8\)"),
        (_images(dtype=np.float64), np.arange(4), "images must be uint8, float32 or float16, got float64"),
        (_images(dtype=np.int64), np.arange(4), "got int64"),
        (_images(), np.arange(4).reshape(2, 2), r"labels must have shape \(N,\), got shape \(2, 2\)"),
        (_images(), np.zeros(4, np.float32), "labels must be integers, got float32"),
        (_images(), np.arange(5), "labels has length 5 but images has 4"),
    ])
    def test_rejects(self, images, labels, message):
        with pytest.raises(ValueError, match=message):
            check_batch(images, labels)


class TestMakeRequest:
    def test_tuple_gets_index_id_and_config(self):
        config = encode_config(num_classes=5)
        request = make_request((_images(), np.array([4, 3, 2, 1], np.uint8)), 7, config)
        assert request.request_id == "7"
        assert list(request.labels) == [4, 3, 2, 1]
        assert request.images.dtype == tensor_pb2.DATA_TYPE_UINT8
        assert list(request.images.shape) == [4, 8, 8, 3]
        assert request.HasField("config") and request.config.instahide.num_classes == 5

    def test_batch_keeps_its_id_and_no_config(self):
        request = make_request(EncodeBatch(_images(), np.arange(4), request_id="cifar-3"), 0, None)
        assert request.request_id == "cifar-3"
        assert not request.HasField("config")

    def test_non_contiguous_images_are_packed(self):
        images = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)[:, ::-1]
        request = make_request((images, np.arange(4)), 0, None)
        assert request.images.content == np.ascontiguousarray(images).tobytes()

    def test_rejects_other_items(self):
        with pytest.raises(TypeError, match="expected an EncodeBatch or an"):
            make_request([_images(), np.arange(4)], 0, None)


class TestBatchBounds:
    @pytest.mark.parametrize(("count", "size", "bounds"), [
        (0, 4, []),
        (1, 4, [(0, 1)]),
        (8, 4, [(0, 4), (4, 8)]),
        (10, 4, [(0, 4), (4, 8), (8, 10)]),
        (9, 4, [(0, 4), (4, 9)]),  # a single last image joins the batch before
        (3, 2, [(0, 3)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
    ])
    def test_bounds(self, count, size, bounds):
        assert batch_bounds(count, size) == bounds
