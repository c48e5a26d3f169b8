"""The server's transport security: PEM files → checked TLS material → gRPC server credentials.

``--tls-cert-file`` and ``--tls-key-file`` (given together) turn on TLS; ``--tls-client-ca-file``
adds mutual TLS: every client must present a certificate that this CA signed. The files are read and
checked at start (the certificate and key parse, and the key belongs to the certificate), so a wrong
file stops the server with exit status 2 and a message naming the flag, rather than failing every
handshake later. Nothing here logs or puts in a message the contents of a file; the key is secret.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import pathlib
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from instahide_server.config import ConfigError, TransportConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsMaterial:
    """A checked certificate chain and key, and for mutual TLS the CA that client certificates need."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None

    @property
    def mode(self) -> str:
        """"mtls" when client certificates are required, else "tls"."""
        return "mtls" if self.client_ca is not None else "tls"

    def server_credentials(self) -> grpc.ServerCredentials:
        """gRPC credentials; with a client CA, a client without a certificate it signed is refused."""
        return grpc.ssl_server_credentials([(self.private_key, self.certificate_chain)],
                                           root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def load_tls(config: TransportConfig) -> TlsMaterial | None:
    """Read and check the TLS files named in the transport settings; None when TLS is off.

    Raises:
        ConfigError: a file that cannot be read, is not PEM of the right kind, a key that does not
            belong to the certificate, or an encrypted key; the message names the flag and the path.
    """
    if config.tls_cert_file is None:
        return None
    assert config.tls_key_file is not None  # ServerConfig.check pairs them
    chain_pem = _read(config.tls_cert_file, "--tls-cert-file")
    leaf = _certificates(chain_pem, config.tls_cert_file, "--tls-cert-file")[0]
    key_pem = _read(config.tls_key_file, "--tls-key-file")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise ConfigError(f"--tls-key-file {config.tls_key_file}: the key is encrypted; give an unencrypted "
                          "PEM key (keep the file readable by the service user only)") from None
    except ValueError:
        raise ConfigError(f"--tls-key-file {config.tls_key_file}: no PEM private key in it "
                          "(expected '-----BEGIN PRIVATE KEY-----' or an RSA/EC key)") from None
    except UnsupportedAlgorithm:
        raise ConfigError(f"--tls-key-file {config.tls_key_file}: unsupported key type") from None
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise ConfigError(f"--tls-key-file {config.tls_key_file} does not belong to the certificate in "
                          f"--tls-cert-file {config.tls_cert_file} (their public keys differ)")
    client_ca = None
    if config.tls_client_ca_file is not None:
        client_ca = _read(config.tls_client_ca_file, "--tls-client-ca-file")
        _certificates(client_ca, config.tls_client_ca_file, "--tls-client-ca-file")
    now = datetime.datetime.now(datetime.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        logger.warning("the certificate in %s is valid from %s to %s only: clients will refuse it",
                       config.tls_cert_file, leaf.not_valid_before_utc, leaf.not_valid_after_utc)
    return TlsMaterial(certificate_chain=chain_pem, private_key=key_pem, client_ca=client_ca)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name as given to ``--host``) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def log_transport(config: TransportConfig, tls: TlsMaterial | None) -> None:
    """Say how the port is secured; warn when bearer tokens and images would cross a network in clear."""
    logger.info("transport %s", "plaintext" if tls is None else tls.mode)
    if tls is None and not is_loopback(config.host):
        logger.warning("listening in plaintext on %s: tokens, images and encodings cross the network "
                       "unencrypted; give --tls-cert-file and --tls-key-file (and --tls-client-ca-file for "
                       "mutual TLS), or terminate TLS in front of the server", config.host)


def _read(path: pathlib.Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def _certificates(pem: bytes, path: pathlib.Path, flag: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(f"{flag} {path}: no PEM certificate in it (expected '-----BEGIN CERTIFICATE-----')")
    return certificates


def _public_bytes(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
