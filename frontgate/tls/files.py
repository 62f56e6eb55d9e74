"""Certificate, key and CA files: read and checked before any SSL context is made from them, so a bad file
is reported with the file and field it came from (`frontgate validate`, a rejected reload) rather than as an
OpenSSL error at startup.

Paths are used as written: relative ones are relative to the directory frontgate runs in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

Segment = str | int


class TlsFileError(ValueError):
    """A file named by a TLS setting is unusable. `path` is the setting's field path, as segments
    (`("certificates", 0, "key")`); `under` prefixes it with where that setting sits in the config."""

    def __init__(self, path: str | Sequence[Segment], message: str) -> None:
        super().__init__(message)
        self.path: tuple[Segment, ...] = (path,) if isinstance(path, str) else tuple(path)

    def under(self, *prefix: Segment) -> TlsFileError:
        return TlsFileError((*prefix, *self.path), str(self))


@dataclass(frozen=True, slots=True)
class CertificatePair:
    cert_path: str
    key_path: str
    leaf: x509.Certificate

    @property
    def dns_names(self) -> list[str]:
        """The names SNI is matched against: the DNS subject alternative names, else the common name."""
        try:
            san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            names = []
        if not names:
            names = [str(a.value).lower() for a in self.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return names


def _read(path: str, field: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(field, f"cannot read {what} file '{path}': {exc.strerror or exc}") from None


def read_certificates(path: str, field: str) -> list[x509.Certificate]:
    """Every PEM certificate in the file, in order; at least one."""
    data = _read(path, field, "certificate")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TlsFileError(field, f"'{path}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certificates


def read_private_key(path: str, field: str) -> PrivateKeyTypes:
    data = _read(path, field, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsFileError(field, f"'{path}' is an encrypted key; frontgate needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(field, f"'{path}' holds no PEM private key (-----BEGIN PRIVATE KEY-----)") from None


def _public_der(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    der: bytes = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def read_certificate_pair(cert_path: str, key_path: str) -> CertificatePair:
    """A certificate chain (leaf first) and the private key of its leaf; raises TlsFileError."""
    leaf = read_certificates(cert_path, "cert")[0]
    key = read_private_key(key_path, "key")
    if _public_der(leaf) != _public_der(key):
        raise TlsFileError("key", f"the key in '{key_path}' does not match the certificate in '{cert_path}'")
    return CertificatePair(cert_path, key_path, leaf)
