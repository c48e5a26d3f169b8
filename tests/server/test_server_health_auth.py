"""Health checks, reflection and bearer-token authentication."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from server_testlib import channel, config, encode_all, encoded, request, start_server

TOKEN = "s3cret-token-for-tests"
SERVING = health_pb2.HealthCheckResponse.SERVING


def _check(target: str, service: str = "") -> int:
    with channel(target) as chan:
        return health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=service),
                                                      timeout=10).status


def test_health_reports_serving(server):
    assert _check(server.target) == SERVING
    assert _check(server.target, "instahide.v1.TransformService") == SERVING
    with pytest.raises(grpc.RpcError) as caught:
        _check(server.target, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details().startswith("service: no health status for 'no.such.Service'")


def test_health_lists_every_service_without_a_traceback(server):
    with channel(server.target) as chan:
        listed = health_pb2_grpc.HealthStub(chan).List(health_pb2.HealthListRequest(), timeout=10)
    assert {name: status.status for name, status in listed.statuses.items()} == {
        "": SERVING, "instahide.v1.TransformService": SERVING, "instahide.v1.AuditService": SERVING,
        "instahide.v1.KeyService": SERVING, "instahide.v1.InfoService": SERVING}
    assert "Traceback" not in server.log()


def test_reflection_lists_the_services(server):
    with channel(server.target) as chan:
        database = ProtoReflectionDescriptorDatabase(chan)
        services = set(database.get_services())
        assert {"instahide.v1.TransformService", "instahide.v1.InfoService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= services
        method = DescriptorPool(database).FindServiceByName("instahide.v1.TransformService").methods_by_name["Encode"]
        assert method.input_type.full_name == "instahide.v1.EncodeRequest"
        assert method.client_streaming and method.server_streaming


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, small_pool_path):
    tmp_path = tmp_path_factory.mktemp("auth")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with start_server(tmp_path, "--pool", str(small_pool_path), "--token-file", str(token_file),
                      health_port=True) as proc:
        yield proc
    assert TOKEN not in proc.log()


@pytest.mark.parametrize("metadata", [None, [("authorization", "Bearer wrong-token")],
                                      [("authorization", TOKEN)], [("authorization", "Basic " + TOKEN)]],
                         ids=["none", "wrong", "no-scheme", "basic"])
def test_calls_without_the_token_are_unauthenticated(auth_server, metadata):
    with pytest.raises(grpc.RpcError) as caught:
        encode_all(auth_server.target, [request("r", cfg=config())], metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token" in caught.value.details() or "Bearer" in caught.value.details()


def test_the_right_token_works(auth_server):
    (response,) = encode_all(auth_server.target, [request("r", cfg=config())],
                             metadata=[("authorization", f"Bearer {TOKEN}")])
    assert encoded(response).shape == (8, 32, 32, 3)


def test_health_needs_no_token_but_reflection_does(auth_server):
    assert _check(auth_server.target) == SERVING
    with channel(auth_server.target) as chan, pytest.raises(grpc.RpcError) as caught:
        list(ProtoReflectionDescriptorDatabase(chan).get_services())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_undecodable_bytes_without_the_token_are_unauthenticated(auth_server):
    """Authentication comes first: a caller without the token learns nothing about message parsing."""
    error = _truncated_message_error(auth_server.target, "/instahide.v1.AuditService/GetAudit")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_undecodable_bytes_on_the_health_only_port_are_invalid_argument(auth_server):
    error = _truncated_message_error(auth_server.health_target, "/grpc.health.v1.Health/Check")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("request: cannot parse the message")


def _truncated_message_error(target: str, method: str) -> grpc.RpcError:
    """The error a unary ``method`` answers to raw bytes whose field 1 announces 5 bytes and only 2 follow."""
    with channel(target) as chan:
        call = chan.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\x0a\x05ab", timeout=10)
    return caught.value
