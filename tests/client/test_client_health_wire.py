"""The hand-encoded grpc.health.v1 messages agree with protobuf's encoding."""

from __future__ import annotations

import pytest
from instahide_client import _health


class TestEncodeRequest:
    def test_default_service_is_empty_message(self):
        assert _health.encode_request("") == b""

    def test_field_one_length_delimited(self):
        assert _health.encode_request("instahide.v1.TransformService") == (
            b"\x0a\x1dinstahide.v1.TransformService")

    def test_long_and_unicode_names_use_varint_length(self):
        name = "ü" * 100  # 200 bytes: a two-byte varint length
        assert _health.encode_request(name) == b"\x0a\xc8\x01" + name.encode()

    @pytest.mark.parametrize("service", ["", "x", "instahide.v1.TransformService", "é" * 300])
    def test_matches_protobuf(self, service):
        health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
        expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        assert _health.encode_request(service) == expected


class TestDecodeResponse:
    @pytest.mark.parametrize(("data", "status"), [
        (b"", 0), (b"\x08\x01", 1), (b"\x08\x02", 2), (b"\x08\x03", 3),
    ])
    def test_status(self, data, status):
        assert _health.decode_response(data) == status

    def test_skips_unknown_fields(self):
        # field 2 string "ab", field 3 fixed64, field 4 fixed32, then status 1
        data = b"\x12\x02ab" + b"\x19" + bytes(8) + b"\x25" + bytes(4) + b"\x08\x01"
        assert _health.decode_response(data) == 1

    @pytest.mark.parametrize("data", [b"\x08", b"\x12\x05ab", b"\x08\x80", b"\x0b"])
    def test_malformed_raises(self, data):
        with pytest.raises(ValueError):
            _health.decode_response(data)

    @pytest.mark.parametrize("status", [0, 1, 2, 3])
    def test_matches_protobuf(self, status):
        health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
        data = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        assert _health.decode_response(data) == status

    def test_names(self):
        assert [_health.status_name(s) for s in range(5)] == [
            "UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "4"]
