"""The verified client certificate of a connection (mTLS), taken apart once per connection, and the
`X-Forwarded-Client-Cert` header that tells the upstream about it.

The header follows Envoy's format, so services behind Envoy and behind frontgate read it the same way:

    x-forwarded-client-cert: Hash=<sha256 of the DER, hex>;Subject="CN=billing.internal,O=Acme";URI=spiffe://acme/billing;DNS=billing.internal

`Subject` is always quoted; other values are quoted when they contain `,`, `;`, `=` or `"` (escaped `\\"`).
The gateway strips any copy a client sends, on every listener and route, and sets it only from a
certificate the TLS handshake verified against `client_ca`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509

from frontgate.tls.subjects import render_name

XFCC_HEADER = b"x-forwarded-client-cert"


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    subject: str  # RFC 4514, normal form (frontgate/tls/subjects.py)
    issuer: str
    dns_names: tuple[str, ...]
    uris: tuple[str, ...]
    sha256: str  # hex digest of the DER encoding
    header_line: bytes  # `x-forwarded-client-cert: ...\r\n`, made once


def _quote(value: str, always: bool = False) -> str:
    if always or any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _safe(value: str) -> str:
    """SAN values come from the certificate: no control character may reach a header."""
    return "".join(f"%{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)


@lru_cache(maxsize=1024)
def client_certificate(der: bytes) -> ClientCertificate:
    """The certificate a handshake verified, by its DER bytes. Cached: clients reconnect with the same one."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(_safe(n) for n in san.get_values_for_type(x509.DNSName))
        uris = tuple(_safe(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns, uris = (), ()
    subject = render_name(cert.subject)
    digest = hashlib.sha256(der).hexdigest()
    fields = [f"Hash={digest}", f"Subject={_quote(subject, always=True)}"]
    fields += [f"URI={_quote(uri)}" for uri in uris]
    fields += [f"DNS={_quote(name)}" for name in dns]
    line = XFCC_HEADER + b": " + ";".join(fields).encode("utf-8") + b"\r\n"
    return ClientCertificate(subject, render_name(cert.issuer), dns, uris, digest, line)
