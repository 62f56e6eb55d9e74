"""Certificates made in the test: a small CA on top of `cryptography`, with the subjects and SANs (DNS, IP,
URI) a test asks for, written as PEM files where a config can name them."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey
    chain_pem: bytes  # the leaf alone: a root CA is never sent by a well-configured server

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: Path, stem: str) -> tuple[str, str]:
        """Write `<stem>.pem` (the certificate) and `<stem>-key.pem`; return both paths."""
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(self.chain_pem)
        key_path.write_bytes(self.key_pem)
        return str(cert_path), str(key_path)

    @property
    def serial(self) -> int:
        return self.cert.serial_number


class CA:
    def __init__(self, name: str = "frontgate test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(hours=1)).not_valid_after(_NOW + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    def write(self, directory: Path, stem: str = "ca") -> str:
        path = directory / f"{stem}.pem"
        path.write_bytes(self.cert_pem)
        return str(path)

    def issue(self, *dns: str, ips: tuple[str, ...] = (), uris: tuple[str, ...] = (),
              subject: list[tuple[x509.ObjectIdentifier, str]] | None = None, client: bool = False,
              rsa_key: bool = False) -> Issued:
        """A leaf for `dns` names (a server certificate), or with `client=True` a client certificate.
        `subject` is written in X.509 order (most general first); default: CN = the first DNS name.
        The key is ECDSA P-256, or RSA 2048 with `rsa_key`."""
        key: PrivateKey = (rsa.generate_private_key(65537, 2048) if rsa_key
                           else ec.generate_private_key(ec.SECP256R1()))
        attributes = subject if subject is not None else [(NameOID.COMMON_NAME, dns[0] if dns else "leaf")]
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.UniformResourceIdentifier(uri) for uri in uris]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(hours=1)).not_valid_after(_NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert, key, _pem(cert))
