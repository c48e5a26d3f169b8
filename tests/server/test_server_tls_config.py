"""The TLS and limit settings: what is refused at start (exit 2, naming the flag) and what is logged."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from certs import issue
from cryptography.hazmat.primitives import serialization
from instahide_server.__main__ import build_parser
from instahide_server.config import ConfigError, ServerConfig, TransportConfig
from instahide_server.tls import is_loopback, load_tls, log_transport


def config_from(argv: list[str], environ: dict[str, str] | None = None) -> ServerConfig:
    return ServerConfig.from_args_and_env(build_parser().parse_args(argv), environ or {})


def transport_from(argv: list[str], environ: dict[str, str] | None = None) -> TransportConfig:
    return config_from(argv, environ).transport


def tls_flags(cert, key, client_ca=None) -> list[str]:
    flags = ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    return flags + (["--tls-client-ca-file", str(client_ca)] if client_ca is not None else [])


class TestLoad:
    def test_tls_and_mtls(self, pki):
        tls = load_tls(transport_from(tls_flags(pki.server.cert_path, pki.server.key_path)))
        assert tls.mode == "tls" and tls.client_ca is None
        assert tls.certificate_chain == pki.server.cert_pem
        assert "PRIVATE" not in repr(tls)  # the key stays out of any repr that might be logged
        mtls = load_tls(transport_from(tls_flags(pki.server.cert_path, pki.server.key_path, pki.ca.cert_path)))
        assert mtls.mode == "mtls" and mtls.client_ca == pki.ca.cert_pem

    def test_off_without_flags(self):
        assert load_tls(transport_from([])) is None

    def test_from_the_environment(self, pki):
        environ = {"INSTAHIDE_TLS_CERT_FILE": str(pki.server.cert_path),
                   "INSTAHIDE_TLS_KEY_FILE": str(pki.server.key_path),
                   "INSTAHIDE_TLS_CLIENT_CA_FILE": str(pki.ca.cert_path)}
        assert load_tls(transport_from([], environ)).mode == "mtls"

    def test_a_chain_with_an_intermediate_keeps_the_leaf_first(self, pki, tmp_path):
        chain = tmp_path / "chain.pem"
        chain.write_bytes(pki.server.cert_pem + pki.ca.cert_pem)
        material = load_tls(transport_from(tls_flags(chain, pki.server.key_path)))
        assert material.certificate_chain == chain.read_bytes()


class TestRefused:
    @pytest.mark.parametrize(("argv", "message"), [
        (["--tls-cert-file", "c.pem"], "--tls-cert-file needs --tls-key-file"),
        (["--tls-key-file", "k.pem"], "--tls-key-file needs --tls-cert-file"),
        (["--tls-client-ca-file", "ca.pem"], "--tls-client-ca-file (mutual TLS) needs --tls-cert-file"),
        (["--max-concurrent-rpcs", "0"], "--max-concurrent-rpcs: must be at least 1"),
        (["--max-concurrent-streams", "-1"], "--max-concurrent-streams: must be at least 1"),
        (["--health-port-file", "hp"], "--health-port-file needs --health-port"),
        (["--health-port", "70000"], "--health-port: must be in [0, 65535]"),
    ])
    def test_settings_that_do_not_fit_together(self, argv, message):
        with pytest.raises(ConfigError) as caught:
            config_from(argv)
        assert message in str(caught.value)

    def test_a_missing_file(self, pki, tmp_path):
        with pytest.raises(ConfigError) as caught:
            load_tls(transport_from(tls_flags(pki.server.cert_path, tmp_path / "absent.key")))
        expected = f"--tls-key-file {tmp_path / 'absent.key'}: cannot read it: No such file or directory"
        assert str(caught.value) == expected

    def test_not_a_certificate(self, pki):
        with pytest.raises(ConfigError) as caught:  # the key file given as the certificate
            load_tls(transport_from(tls_flags(pki.server.key_path, pki.server.key_path)))
        assert str(caught.value).startswith(f"--tls-cert-file {pki.server.key_path}: no PEM certificate")

    def test_not_a_key(self, pki):
        with pytest.raises(ConfigError) as caught:
            load_tls(transport_from(tls_flags(pki.server.cert_path, pki.server.cert_path)))
        assert str(caught.value).startswith(f"--tls-key-file {pki.server.cert_path}: no PEM private key")

    def test_a_key_of_another_certificate(self, pki):
        with pytest.raises(ConfigError) as caught:
            load_tls(transport_from(tls_flags(pki.server.cert_path, pki.client.key_path)))
        assert "does not belong to the certificate in --tls-cert-file" in str(caught.value)

    def test_an_encrypted_key(self, pki, tmp_path):
        encrypted = tmp_path / "encrypted.key"
        encrypted.write_bytes(pki.server.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase")))
        with pytest.raises(ConfigError) as caught:
            load_tls(transport_from(tls_flags(pki.server.cert_path, encrypted)))
        assert "the key is encrypted" in str(caught.value)

    def test_a_client_ca_that_is_not_a_certificate(self, pki, tmp_path):
        (tmp_path / "ca.pem").write_text("not a certificate\n")
        with pytest.raises(ConfigError) as caught:
            load_tls(transport_from(tls_flags(pki.server.cert_path, pki.server.key_path, tmp_path / "ca.pem")))
        assert str(caught.value).startswith(f"--tls-client-ca-file {tmp_path / 'ca.pem'}: no PEM certificate")

    def test_an_expired_certificate_starts_with_a_warning(self, pki, tmp_path, caplog):
        old = issue(tmp_path, "old-server", pki.ca, server=True, expired=True)
        with caplog.at_level(logging.WARNING, logger="instahide_server.tls"):
            assert load_tls(transport_from(tls_flags(old.cert_path, old.key_path))) is not None
        assert "clients will refuse it" in caplog.text


def _server(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "instahide_server", "--port", "0", *flags], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


class TestTheServerCommand:
    """A real ``instahide-server`` exits 2 at once, naming the flag; the key never reaches its output."""

    def test_a_mismatched_key(self, pki):
        proc = _server(*tls_flags(pki.server.cert_path, pki.other_server.key_path))
        assert proc.returncode == 2
        assert "--tls-key-file" in proc.stderr and "does not belong to the certificate" in proc.stderr
        key_lines = pki.other_server.key_pem.decode().splitlines()[1:-1]
        assert not any(line in proc.stderr + proc.stdout for line in key_lines)

    def test_a_certificate_without_its_key_from_the_environment(self, pki):
        proc = _server(env={"INSTAHIDE_TLS_CERT_FILE": str(pki.server.cert_path)})
        assert proc.returncode == 2
        assert "--tls-cert-file needs --tls-key-file" in proc.stderr

    def test_an_unreadable_client_ca(self, pki, tmp_path):
        proc = _server(*tls_flags(pki.server.cert_path, pki.server.key_path, tmp_path / "missing-ca.pem"))
        assert proc.returncode == 2
        assert f"--tls-client-ca-file {tmp_path / 'missing-ca.pem'}: cannot read it" in proc.stderr


class TestTransportLog:
    @pytest.mark.parametrize(("host", "loopback"), [
        ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
        ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("gpu-box.internal", False),
    ])
    def test_is_loopback(self, host, loopback):
        assert is_loopback(host) is loopback

    def test_plaintext_beyond_loopback_warns(self, pki, caplog):
        tls = load_tls(transport_from(tls_flags(pki.server.cert_path, pki.server.key_path)))
        cases = [("0.0.0.0", None), ("127.0.0.1", None), ("0.0.0.0", tls)]
        records = []
        for host, material in cases:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="instahide_server.tls"):
                log_transport(replace(ServerConfig().transport, host=host), material)
            records.append([(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records])
        assert records == [
            [("INFO", "transport plaintext"), ("WARNING", "listening in plaintext on 0.0.0.0")],
            [("INFO", "transport plaintext")],
            [("INFO", "transport tls")],
        ]


def test_limits_and_the_health_port_from_the_environment():
    environ = {"INSTAHIDE_MAX_CONCURRENT_RPCS": "7", "INSTAHIDE_MAX_CONCURRENT_STREAMS": "9",
               "INSTAHIDE_HEALTH_PORT": "0"}
    config = config_from([], environ)
    transport = config.transport
    assert (transport.max_concurrent_rpcs, transport.max_concurrent_streams, transport.health_port) == (7, 9, 0)
    assert transport_from([]).max_concurrent_rpcs is None and transport_from([]).health_port is None
