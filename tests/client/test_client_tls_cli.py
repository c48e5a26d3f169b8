"""The client's TLS options and the real ``instahide`` command over TLS and mutual TLS.

Servers: the session's ``tls_server`` (TLS + token) and ``mtls_server`` (client certificates from
``pki.ca`` required), certificates made at test time (tests/certs.py).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from instahide_client import InstaHideClient
from instahide_client.cli import main


def _instahide_command() -> list[str]:
    """The installed console script, or the module when the venv has no script."""
    script = pathlib.Path(sys.executable).with_name("instahide")
    return [str(script)] if script.exists() else [sys.executable, "-m", "instahide_client.cli"]


def instahide(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # INSTAHIDE_* from the outer environment must not leak into these runs.
    base = {k: v for k, v in os.environ.items() if not k.startswith("INSTAHIDE_")}
    return subprocess.run([*_instahide_command(), *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})})


def client_cert_flags(pki) -> list[str]:
    return ["--ca-file", str(pki.ca.cert_path), "--cert-file", str(pki.client.cert_path),
            "--key-file", str(pki.client.key_path)]


@pytest.fixture
def input_npz(tmp_path) -> pathlib.Path:
    path = tmp_path / "in.npz"
    rng = np.random.default_rng(1)
    np.savez(path, images=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), labels=np.arange(6) % 3)
    return path


class TestHealth:
    def test_over_tls_with_the_ca_and_no_token(self, tls_server, pki):
        proc = instahide("health", "--target", tls_server.target, "--ca-file", str(pki.ca.cert_path))
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "SERVING\n", "")

    def test_over_mtls_with_a_client_certificate(self, mtls_server, pki):
        proc = instahide("health", "--target", mtls_server.target, *client_cert_flags(pki))
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "SERVING\n", "")

    def test_over_mtls_from_the_environment_with_a_server_name(self, mtls_server, pki):
        port = mtls_server.target.rsplit(":", 1)[1]
        env = {"INSTAHIDE_TARGET": f"127.0.0.1:{port}", "INSTAHIDE_CA_FILE": str(pki.ca.cert_path),
               "INSTAHIDE_CERT_FILE": str(pki.client.cert_path), "INSTAHIDE_KEY_FILE": str(pki.client.key_path),
               "INSTAHIDE_SERVER_NAME": "localhost"}
        proc = instahide("health", env=env)
        assert (proc.returncode, proc.stdout) == (0, "SERVING\n"), proc.stderr
        proc = instahide("health", env={**env, "INSTAHIDE_SERVER_NAME": "not-in-the-certificate.example"})
        assert proc.returncode == 1 and proc.stderr.startswith("error: UNAVAILABLE: ")  # the name was checked

    def test_over_mtls_without_a_client_certificate_fails(self, mtls_server, pki):
        proc = instahide("health", "--target", mtls_server.target, "--ca-file", str(pki.ca.cert_path))
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: UNAVAILABLE: ") and proc.stdout == ""

    def test_plaintext_against_tls_fails(self, tls_server):
        proc = instahide("health", "--target", tls_server.target)
        assert proc.returncode == 1 and proc.stderr.startswith("error: UNAVAILABLE: ")


class TestEncode:
    def test_over_mtls(self, mtls_server, pki, input_npz, tmp_path):
        out = tmp_path / "out.npz"
        proc = instahide("encode", "--target", mtls_server.target, *client_cert_flags(pki), "--input", str(input_npz),
                         "--output", str(out), "--mode", "inside", "--k", "2", "--return-keys", "--no-sign-flip",
                         "--quiet")
        assert (proc.returncode, proc.stderr) == (0, "")
        with np.load(input_npz) as given, np.load(out, allow_pickle=False) as data:
            x = given["images"].astype(np.float64) / 127.5 - 1
            expected = np.einsum("nk,nkhwc->nhwc", data["keys_coefficients"], x[data["keys_indices"]])
            np.testing.assert_allclose(data["encoded"], expected, atol=1e-5)
            assert data["labels"].shape == (6, 3)

    def test_over_tls_with_the_token(self, tls_server, tls_token, pki, input_npz, tmp_path):
        out = tmp_path / "out.npz"
        proc = instahide("encode", "--target", tls_server.target, "--ca-file", str(pki.ca.cert_path),
                         "--input", str(input_npz), "--output", str(out), "--quiet",
                         env={"INSTAHIDE_TOKEN": tls_token})
        assert (proc.returncode, proc.stderr) == (0, "")
        with np.load(out, allow_pickle=False) as data:
            assert data["encoded"].shape == (6, 32, 32, 3) and np.isfinite(data["encoded"]).all()

    def test_the_audit_commands_take_the_same_options(self, mtls_server, pki):
        proc = instahide("audit", "list", "--target", mtls_server.target, *client_cert_flags(pki))
        assert proc.returncode == 0, proc.stderr


class TestOptionErrors:
    @pytest.mark.parametrize(("argv", "message"), [
        (["health", "--cert-file", "c.pem"], "--cert-file needs --key-file too"),
        (["health", "--key-file", "k.pem", "--ca-file", "ca.pem"], "--key-file needs --cert-file too"),
        (["encode", "--input", "a", "--output", "b", "--server-name", "x"], "--server-name applies to TLS only"),
    ])
    def test_usage_errors_exit_2(self, argv, message, capsys, monkeypatch):
        for name in ("INSTAHIDE_CA_FILE", "INSTAHIDE_CERT_FILE", "INSTAHIDE_KEY_FILE", "INSTAHIDE_SERVER_NAME"):
            monkeypatch.delenv(name, raising=False)
        assert main(argv) == 2
        assert message in capsys.readouterr().err

    def test_an_unreadable_key_file(self, pki, tmp_path, free_target, capsys):
        argv = ["health", "--target", free_target, "--ca-file", str(pki.ca.cert_path),
                "--cert-file", str(pki.client.cert_path), "--key-file", str(tmp_path / "absent.key")]
        assert main(argv) == 1
        assert capsys.readouterr().err == f"error: cannot read key file {tmp_path / 'absent.key'}: " \
                                          "No such file or directory\n"


class TestClientArguments:
    def test_a_certificate_needs_its_key(self, pki):
        with pytest.raises(ValueError, match="certificate_chain and private_key go together"):
            InstaHideClient("127.0.0.1:1", certificate_chain=pki.client.cert_pem)
        with pytest.raises(ValueError, match="certificate_chain and private_key go together"):
            InstaHideClient("127.0.0.1:1", private_key=pki.client.key_pem)

    def test_a_server_name_needs_tls(self):
        with pytest.raises(ValueError, match="server_name applies to TLS only"):
            InstaHideClient("127.0.0.1:1", server_name="localhost")


def test_tls_against_a_plaintext_server_says_so(server, pki):
    proc = instahide("health", "--target", server.target, "--ca-file", str(pki.ca.cert_path), "--timeout", "5")
    last = proc.stderr.strip().splitlines()[-1]  # gRPC core may log the handshake's raw error before it
    assert proc.returncode == 1 and last.startswith("error: UNAVAILABLE: "), proc.stderr
    assert "is the server plaintext" in last, proc.stderr
