"""Bad requests are answered with an error naming the field, and the same stream goes on."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest
from instahide_client.instahide.v1 import instahide_pb2, tensor_pb2, transform_pb2, transform_pb2_grpc
from instahide_client.tensors import to_tensor
from server_testlib import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    MIB,
    RESOURCE_EXHAUSTED,
    channel,
    config,
    encode_all,
    encoded,
    images,
    request,
    start_env_server,
    start_server,
)


def _float_images(value: float) -> np.ndarray:
    batch = images(4).astype(np.float32) / 127.5 - 1
    batch[2, 5, 7, 1] = value
    return batch


def _tensor(**fields) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(**fields)


# name -> (request, expected code, expected field)
BAD_REQUESTS = {
    "missing images": (transform_pb2.EncodeRequest(request_id="bad", labels=[0, 1], config=config()),
                       INVALID_ARGUMENT, "images"),
    "rank 3": (request("bad", tensor=to_tensor(images(1)[0]), labels=[0] * 32, cfg=config()),
               INVALID_ARGUMENT, "images.shape"),
    "int64 images": (request("bad", images(4).astype(np.int64), cfg=config()), INVALID_ARGUMENT, "images.dtype"),
    "unspecified dtype": (request("bad", tensor=_tensor(shape=[4, 2, 2, 3], content=bytes(48)), cfg=config()),
                          INVALID_ARGUMENT, "images.dtype"),
    "byte length": (request("bad", tensor=_tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[4, 32, 32, 3],
                                                  content=bytes(100)), cfg=config()),
                    INVALID_ARGUMENT, "images.content"),
    "empty batch": (request("bad", tensor=_tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[0, 32, 32, 3]),
                            cfg=config()), INVALID_ARGUMENT, "images.shape"),
    "one image": (request("bad", images(1), cfg=config()), INVALID_ARGUMENT, "images.shape"),
    "label count": (request("bad", images(4), labels=[0, 1, 2], cfg=config()), INVALID_ARGUMENT, "labels"),
    "labels out of range": (request("bad", images(4), labels=[0, 1, 2, 10], cfg=config()),
                            INVALID_ARGUMENT, "labels"),
    "negative label": (request("bad", images(4), labels=[0, -1, 2, 3], cfg=config()), INVALID_ARGUMENT, "labels"),
    "num_classes 0": (request("bad", images(4), cfg=config(num_classes=0)), INVALID_ARGUMENT,
                      "config.instahide.num_classes"),
    "k too large": (request("bad", images(4), cfg=config(k=17)), INVALID_ARGUMENT, "config.instahide.k"),
    "k too small": (request("bad", images(4), cfg=config(mode=instahide_pb2.MIXING_MODE_INSIDE, k=1)),
                    INVALID_ARGUMENT, "config.instahide.k"),
    "private_per_mix above k": (request("bad", images(4), cfg=config(k=3, private_per_mix=4)),
                                INVALID_ARGUMENT, "config.instahide.private_per_mix"),
    "max_coefficient 0": (request("bad", images(4), cfg=config(max_coefficient=0.0)), INVALID_ARGUMENT,
                          "config.instahide.max_coefficient"),
    "min_private_mass above 1": (request("bad", images(4), cfg=config(min_private_mass=1.5)), INVALID_ARGUMENT,
                                 "config.instahide.min_private_mass"),
    "unknown mode": (request("bad", images(4), cfg=config(mode=7)), INVALID_ARGUMENT, "config.instahide.mode"),
    "uint8 output": (request("bad", images(4), cfg=config(output_dtype=tensor_pb2.DATA_TYPE_UINT8)),
                     INVALID_ARGUMENT, "config.output_dtype"),
    "NaN pixel": (request("bad", _float_images(np.nan), cfg=config()), INVALID_ARGUMENT, "images.content"),
    "Inf pixel": (request("bad", _float_images(np.inf), cfg=config()), INVALID_ARGUMENT, "images.content"),
    "float out of [-1, 1]": (request("bad", _float_images(3.0), cfg=config()), INVALID_ARGUMENT,
                             "images.content"),
    "4 channels in cross mode": (request("bad", images(4, (8, 8, 4)), cfg=config()), INVALID_ARGUMENT,
                                 "images.shape"),
    "response over the message limit": (request("bad", images(4), cfg=config(num_classes=10_000_000)),
                                        RESOURCE_EXHAUSTED, "images"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_is_answered_and_the_stream_goes_on(server, name):
    bad, code, field = BAD_REQUESTS[name]
    good = request("good", images(5, seed=1), cfg=config())
    error_response, good_response = encode_all(server.target, [bad, good])
    assert error_response.request_id == "bad"
    assert error_response.error.code == code
    assert error_response.error.field == field
    assert error_response.error.message.startswith(field + ":"), error_response.error.message
    assert not error_response.HasField("encoded") and not error_response.HasField("labels")
    assert good_response.request_id == "good" and encoded(good_response).shape == (5, 32, 32, 3)


def test_a_bad_request_without_config_reuses_the_streams_config(server):
    responses = encode_all(server.target, [
        request("first", images(4), labels=[0, 1, 2, 0], cfg=config(num_classes=3)),
        request("second", images(4), labels=[0, 1, 2, 5]),  # 5 >= the carried-over num_classes
        request("third", images(4), labels=[0, 1, 2, 2]),
    ])
    assert [r.HasField("error") for r in responses] == [False, True, False]
    assert responses[1].error.field == "labels"
    assert list(responses[2].labels.shape) == [4, 3]


def test_limits_from_the_environment(tmp_path, small_pool_path):
    """Every setting from INSTAHIDE_* (no flags): the image limit answers RESOURCE_EXHAUSTED beyond it."""
    env = {"INSTAHIDE_HOST": "127.0.0.1", "INSTAHIDE_PORT": "0", "INSTAHIDE_DEVICE": "cpu",
           "INSTAHIDE_POOL": str(small_pool_path), "INSTAHIDE_MAX_IMAGES_PER_REQUEST": "4",
           "INSTAHIDE_WORKERS": "1", "INSTAHIDE_LOG_LEVEL": "debug"}
    with start_env_server(tmp_path, env) as (target, _):
        too_many, just_enough = encode_all(target, [request("five", images(5), cfg=config()),
                                                    request("four", images(4))])
        assert too_many.error.code == RESOURCE_EXHAUSTED and too_many.error.field == "images.shape"
        assert "limit of 4" in too_many.error.message
        assert encoded(just_enough).shape == (4, 32, 32, 3)


def test_photos_that_cannot_fill_the_pool(tmp_path):
    """A pool the configured photos cannot fill is the server's fault (FAILED_PRECONDITION, naming the remedy);
    the stream goes on, and a request that mixes in no public image is served."""
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "flat.png"), np.full((300, 300, 3), 128, dtype=np.uint8))  # no keypoint
    with start_server(tmp_path, "--pool-photos", str(photos), "--pool-size", "4") as server:
        cross, inside, again = encode_all(server.target, [
            request("cross", images(4), cfg=config()),
            request("inside", images(4), cfg=config(mode=instahide_pb2.MIXING_MODE_INSIDE)),
            request("again", images(4), cfg=config())])
        assert cross.error.code == FAILED_PRECONDITION and cross.error.field == ""
        assert "cannot cut a public pool of 4 images of 32x32" in cross.error.message
        assert "--pool-size" in cross.error.message
        assert encoded(inside).shape == (4, 32, 32, 3)
        assert again.error == cross.error
    log = server.log()
    assert "could not build the public pool for images [32, 32, 3] at start" in log and "Traceback" not in log


def test_message_size_limits(tmp_path, small_pool_path):
    with start_server(tmp_path, "--pool", str(small_pool_path), "--max-message-bytes", str(MIB)) as server:
        # 2 MiB in: over the receive limit, so the stream ends with RESOURCE_EXHAUSTED ...
        oversized = request("huge", images(683), cfg=config())
        assert oversized.ByteSize() > MIB
        with channel(server.target) as chan:
            stub = transform_pb2_grpc.TransformServiceStub(chan)
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Encode(iter([request("small", images(4), cfg=config()), oversized]), timeout=30))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ... 600 KB in would be 2.4 MB out: refused per request, and the stream goes on ...
        big_reply, fine = encode_all(server.target, [request("big-reply", images(200), cfg=config()),
                                                      request("fine", images(50))])
        assert big_reply.error.code == RESOURCE_EXHAUSTED and big_reply.error.field == "images"
        assert encoded(fine).shape == (50, 32, 32, 3)
        # ... and the server still serves new streams.
        (again,) = encode_all(server.target, [request("again", images(8), cfg=config())])
        assert encoded(again).shape == (8, 32, 32, 3)
    assert "Traceback" not in server.log()


# Bytes that parse as no message: field 1 announces 5 bytes and only 2 follow.
UNDECODABLE = b"\x0a\x05ab"


def _raw(data: bytes) -> bytes:
    return data


def test_undecodable_bytes_end_an_encode_stream_with_invalid_argument_after_the_good_requests(server):
    good = request("good", images(4), cfg=config()).SerializeToString()
    responses = []
    with channel(server.target) as chan:
        encode = chan.stream_stream("/instahide.v1.TransformService/Encode", request_serializer=_raw,
                                    response_deserializer=transform_pb2.EncodeResponse.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            for response in encode(iter([good, UNDECODABLE, good]), timeout=30):
                responses.append(response)
    assert [r.request_id for r in responses] == ["good"] and encoded(responses[0]).shape == (4, 32, 32, 3)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("request: cannot parse the message")
    assert "instahide.v1.EncodeRequest" in caught.value.details()
    (again,) = encode_all(server.target, [request("again", images(4), cfg=config())])
    assert encoded(again).shape == (4, 32, 32, 3)


@pytest.mark.parametrize("method, kind, message", [
    ("/instahide.v1.AuditService/GetAudit", "unary_unary", "instahide.v1.GetAuditRequest"),
    ("/instahide.v1.AuditService/ListAudits", "unary_unary", "instahide.v1.ListAuditsRequest"),
    ("/instahide.v1.AuditService/WatchAudit", "unary_stream", "instahide.v1.WatchAuditRequest"),
    ("/instahide.v1.AuditService/StartAudit", "stream_unary", "instahide.v1.StartAuditRequest"),
    ("/grpc.health.v1.Health/Check", "unary_unary", "grpc.health.v1.HealthCheckRequest"),
])
def test_undecodable_bytes_are_invalid_argument_on_every_kind_of_method(server, method, kind, message):
    """Not gRPC's own UNKNOWN (unary) or INTERNAL (streams), and not the exception's class in the message."""
    with channel(server.target) as chan:
        call = getattr(chan, kind)(method, request_serializer=_raw, response_deserializer=_raw)
        payload = iter([UNDECODABLE]) if kind.startswith("stream") else UNDECODABLE
        with pytest.raises(grpc.RpcError) as caught:
            result = call(payload, timeout=30)
            if kind == "unary_stream":
                list(result)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert caught.value.details().startswith("request: cannot parse the message")
    assert message in caught.value.details() and "DecodeError" not in caught.value.details()
