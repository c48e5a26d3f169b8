"""TLS and mutual TLS on a real server: who gets through, with which status, and what comes back.

Certificates are made at test time (tests/certs.py); the servers are the session's ``tls_server``
(TLS + bearer token) and ``mtls_server`` (client certificates signed by ``pki.ca`` required).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from instahide_client import InstaHideClient
from instahide_client.errors import InstaHideError
from instahide_client.instahide.v1 import transform_pb2_grpc
from server_testlib import config, request

IMAGES = np.random.default_rng(3).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
LABELS = np.arange(8) % 4


def encode_and_check(target: str, **client_options) -> None:
    """Encode IMAGES with returned keys and check every encoding against its recomputation from the keys."""
    with InstaHideClient(target, **client_options) as client:
        out = client.encode(IMAGES, LABELS, mode="inside", k=3, return_keys=True, batch_size=4, timeout=30)
    keys = out.keys
    assert out.encoded.shape == IMAGES.shape and out.mixed_labels.shape == (8, 4)
    x = IMAGES.astype(np.float64) / 127.5 - 1
    mix = np.einsum("nk,nkhwc->nhwc", keys.coefficients, x[keys.indices])
    bits = np.unpackbits(keys.mask_bits, axis=1, count=IMAGES[0].size, bitorder="little")
    np.testing.assert_allclose(out.encoded, (1.0 - 2.0 * bits).reshape(mix.shape) * mix, atol=1e-5)


def refused(target: str, **client_options) -> InstaHideError:
    """The error a health check and an encode both end with; asserts they fail the same way."""
    with InstaHideClient(target, **client_options) as client:
        with pytest.raises(InstaHideError) as health_error:
            client.health(timeout=10)
        with pytest.raises(InstaHideError) as encode_error:
            client.encode(IMAGES, LABELS, timeout=10)
    assert health_error.value.code == encode_error.value.code
    return health_error.value


class TestTls:
    def test_encode_round_trip_with_the_ca(self, tls_server, pki, tls_token):
        encode_and_check(tls_server.target, root_certificates=pki.ca.cert_pem, token=tls_token)

    def test_the_certificate_names_localhost_too(self, tls_server, pki, tls_token):
        port = tls_server.target.rsplit(":", 1)[1]
        encode_and_check(f"localhost:{port}", root_certificates=pki.ca.cert_pem, token=tls_token)

    def test_server_name_override_is_checked_against_the_certificate(self, tls_server, pki, tls_token):
        with InstaHideClient(tls_server.target, root_certificates=pki.ca.cert_pem, server_name="localhost") as client:
            assert client.health() == "SERVING"
        error = refused(tls_server.target, root_certificates=pki.ca.cert_pem, token=tls_token,
                        server_name="not-in-the-certificate.example")
        assert error.code is grpc.StatusCode.UNAVAILABLE

    def test_a_plaintext_client_is_unavailable(self, tls_server, tls_token):
        assert refused(tls_server.target, token=tls_token).code is grpc.StatusCode.UNAVAILABLE

    @pytest.mark.parametrize("trust", ["other_ca", "system_roots"])
    def test_a_client_that_does_not_trust_the_ca_is_unavailable(self, tls_server, pki, tls_token, trust):
        options = {"root_certificates": pki.other_ca.cert_pem} if trust == "other_ca" else {"tls": True}
        error = refused(tls_server.target, token=tls_token, **options)
        assert error.code is grpc.StatusCode.UNAVAILABLE

    def test_health_needs_no_token_but_encode_does(self, tls_server, pki):
        with InstaHideClient(tls_server.target, root_certificates=pki.ca.cert_pem) as client:
            assert client.health() == "SERVING"
            assert client.health("instahide.v1.TransformService") == "SERVING"
            with pytest.raises(InstaHideError) as caught:
                client.encode(IMAGES, LABELS, timeout=10)
        assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED

    def test_the_log_names_the_transport_and_no_secret(self, tls_server, pki, tls_token):
        log = tls_server.log()
        assert "transport tls" in log
        key_body = b"".join(pki.server.key_pem.splitlines()[1:-1]).decode()
        assert key_body[:40] not in log and tls_token not in log


class TestMutualTls:
    def test_the_right_client_certificate_encodes(self, mtls_server, pki):
        encode_and_check(mtls_server.target, root_certificates=pki.ca.cert_pem,
                         certificate_chain=pki.client.cert_pem, private_key=pki.client.key_pem)

    def test_without_a_client_certificate_it_is_refused(self, mtls_server, pki):
        error = refused(mtls_server.target, root_certificates=pki.ca.cert_pem)
        assert error.code is grpc.StatusCode.UNAVAILABLE

    def test_a_client_certificate_from_another_ca_is_refused(self, mtls_server, pki):
        error = refused(mtls_server.target, root_certificates=pki.ca.cert_pem,
                        certificate_chain=pki.other_client.cert_pem, private_key=pki.other_client.key_pem)
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert "transport mtls" in mtls_server.log()

    def test_a_plaintext_client_is_unavailable(self, mtls_server):
        assert refused(mtls_server.target).code is grpc.StatusCode.UNAVAILABLE


class TestHealthOnlyPort:
    def test_it_answers_in_plaintext_without_a_certificate(self, mtls_server):
        with InstaHideClient(mtls_server.health_target) as client:
            assert client.health() == "SERVING"
            assert client.health("instahide.v1.AuditService") == "SERVING"

    def test_it_serves_nothing_but_health(self, mtls_server):
        with grpc.insecure_channel(mtls_server.health_target) as channel:
            stub = transform_pb2_grpc.TransformServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Encode(iter([request("r", cfg=config())]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
