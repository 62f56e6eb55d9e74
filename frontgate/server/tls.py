"""TLS termination: certificates chosen by SNI (the first is the default), TLS 1.2+ only."""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.x509.oid import NameOID

from frontgate.config.schema import ListenerTls


def _names(cert_path: str) -> list[str]:
    with open(cert_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


def _context(cert: str, key: str, tls: ListenerTls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2", "http/1.1"] if tls.http2 else ["http/1.1"])
    if tls.client_ca:
        context.load_verify_locations(tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if tls.client_cert == "required" else ssl.CERT_OPTIONAL
    return context


def listener_tls_context(tls: ListenerTls) -> ssl.SSLContext:
    contexts = [(_names(c.cert), _context(c.cert, c.key, tls)) for c in tls.certificates]
    default = contexts[0][1]
    by_name: dict[str, ssl.SSLContext] = {}
    wildcards: list[tuple[str, ssl.SSLContext]] = []
    for names, context in contexts:
        for name in names:
            if name.startswith("*."):
                wildcards.append((name[1:], context))
            else:
                by_name.setdefault(name, context)

    def choose(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if not server_name:
            return
        name = server_name.lower()
        chosen = by_name.get(name)
        if chosen is None:
            for suffix, context in wildcards:
                if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                    chosen = context
                    break
        if chosen is not None:
            sock.context = chosen

    default.sni_callback = choose
    return default
