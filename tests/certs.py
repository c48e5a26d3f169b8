"""Certificates made at test time with ``cryptography``: a CA, server and client certificates it signs.

A plain module (like serverproc), so any test folder can ``from certs import make_pki``. Keys are
P-256 (instant to generate); certificates are valid from an hour ago for a day.

    pki = make_pki(tmp_path)                 # CA, server (SAN 127.0.0.1, localhost), client, and a
    pki.ca.cert_path, pki.server.key_path    # second CA with its own client and server, as PEM files
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in memory and as PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: pathlib.Path
    key_path: pathlib.Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()


@dataclass(frozen=True)
class Pki:
    """Everything a TLS / mutual-TLS test needs."""

    ca: Issued
    server: Issued  # signed by ca; SAN 127.0.0.1 and localhost
    client: Issued  # signed by ca; client-auth usage
    other_ca: Issued  # an unrelated CA
    other_server: Issued  # signed by other_ca, same SANs as server
    other_client: Issued  # signed by other_ca


def make_ca(directory: pathlib.Path, name: str) -> Issued:
    """A self-signed CA certificate, written to ``directory/name.crt`` and ``name.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (_builder(subject, subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True))
    return _write(directory, name, builder.sign(key, hashes.SHA256()), key)


def issue(directory: pathlib.Path, name: str, ca: Issued, *, server: bool,
          hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), expired: bool = False) -> Issued:
    """A leaf certificate signed by ``ca``: a server one with ``hosts`` as SANs, or a client one.

    ``expired=True`` makes one that was valid for a day, two days ago.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    shift = datetime.timedelta(days=-2 if expired else 0)
    builder = (_builder(subject, ca.cert.subject, key.public_key(), shift=shift)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _write(directory, name, builder.sign(ca.key, hashes.SHA256()), key)


def make_pki(directory: pathlib.Path) -> Pki:
    """Two independent CAs, each with a server and a client certificate, under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "other-ca")
    return Pki(ca=ca, server=issue(directory, "server", ca, server=True),
               client=issue(directory, "client", ca, server=False), other_ca=other_ca,
               other_server=issue(directory, "other-server", other_ca, server=True),
               other_client=issue(directory, "other-client", other_ca, server=False))


def _builder(subject: x509.Name, issuer: x509.Name, public_key,
             shift: datetime.timedelta = datetime.timedelta(0)) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC) + shift
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _write(directory: pathlib.Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Issued(cert, key, cert_path, key_path)
