"""TLS termination on a listener: certificates chosen by SNI (the first is the default), TLS 1.2 and 1.3
only, forward-secret AEAD suites only, optional or required client certificates (mTLS).

A listening socket keeps the SSL context it was created with, but that context's SNI callback hands every
new handshake a context of the *current* config generation (`Runtime.listener_certificates`). A reload that
re-read the certificate and key files therefore serves them from the next handshake on, while connections
already open keep what they negotiated. OpenSSL takes the certificate, key, CA store and ALPN from the
context the callback picks, but whether a client certificate is asked for (and required) from the
listener's first context: changing that is refused on reload and takes a restart (`reload_problems`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from frontgate.config.schema import ListenerTls, Server
from frontgate.tls.files import CertificatePair, Segment, TlsFileError, read_certificate_pair, read_certificates

# TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher, as Mozilla's "intermediate"
# profile. TLS 1.3 suites are all AEAD with ephemeral keys and are not governed by this string.
TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))


def alpn_protocols(tls: ListenerTls) -> list[str]:
    """What the listener offers by ALPN, most preferred first (server/negotiate.py's AlpnSwitch reads the choice)."""
    return ["h2", "http/1.1"] if tls.http2 else ["http/1.1"]


def server_context(pair: CertificatePair, tls: ListenerTls) -> ssl.SSLContext:
    """One certificate's context; raises TlsFileError naming the field at fault."""
    cert, key = pair.cert_path, pair.key_path
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # No TLS compression (CRIME), no client-started renegotiation (a cheap way to make the server work).
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsFileError("cert", f"'{cert}' cannot be used: {exc.reason or exc}") from None
    context.set_alpn_protocols(alpn_protocols(tls))
    if tls.client_ca:
        read_certificates(tls.client_ca, "client_ca")
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except ssl.SSLError as exc:
            raise TlsFileError("client_ca", f"'{tls.client_ca}' cannot be used: {exc.reason or exc}") from None
        # optional: a client without a certificate is let in unauthenticated; one with a certificate the CA
        # did not sign is refused either way.
        context.verify_mode = ssl.CERT_REQUIRED if tls.client_cert == "required" else ssl.CERT_OPTIONAL
    return context


class CertificateSelector:
    """One config generation's certificates for one listener, and the choice by server name."""

    __slots__ = ("_exact", "_wildcards", "default")

    def __init__(self, certificates: list[tuple[list[str], ssl.SSLContext]]) -> None:
        self.default = certificates[0][1]
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcards: dict[str, ssl.SSLContext] = {}  # ".example.com" for *.example.com
        for names, context in certificates:
            for name in names:
                if name.startswith("*."):
                    self._wildcards.setdefault(name[1:], context)
                else:
                    self._exact.setdefault(name, context)

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        """An exact name first, then a wildcard (which covers exactly one label), else the default."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        context = self._exact.get(name)
        if context is None:
            dot = name.find(".")
            if dot > 0:
                context = self._wildcards.get(name[dot:])
        return context or self.default


def certificate_selector(tls: ListenerTls) -> CertificateSelector:
    """Raises TlsFileError (its path relative to the listener's `tls`) for the first bad file."""
    contexts = []
    for index, certificate in enumerate(tls.certificates):
        try:
            pair = read_certificate_pair(certificate.cert, certificate.key)
            contexts.append((pair.dns_names, server_context(pair, tls)))
        except TlsFileError as error:
            raise (error if error.path == ("client_ca",) else error.under("certificates", index)) from None
    return CertificateSelector(contexts)


def listener_problems(tls: ListenerTls) -> list[TlsFileError]:
    """Every unusable file of a listener's `tls`, each with its path relative to `tls`."""
    problems: list[TlsFileError] = []
    if tls.client_ca:
        try:
            read_certificates(tls.client_ca, "client_ca")
        except TlsFileError as error:
            problems.append(error)
    plain = tls.model_copy(update={"client_ca": None})  # the CA file is reported once, above
    for index, certificate in enumerate(tls.certificates):
        try:
            server_context(read_certificate_pair(certificate.cert, certificate.key), plain)
        except TlsFileError as error:
            problems.append(error.under("certificates", index))
    return problems


class TlsListener:
    """The SSL context a listening socket is created with. Its SNI callback runs for every handshake (with
    no name when the client sent none) and switches it to the current generation's certificate."""

    def __init__(self, current: Callable[[], CertificateSelector | None]) -> None:
        self._current = current
        selector = current()
        if selector is None:
            raise ValueError("a TLS listener needs its certificates compiled")
        self.context = selector.default
        self.context.sni_callback = self._on_server_name

    def _on_server_name(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        selector = self._current()
        if selector is not None:
            sock.context = selector.choose(server_name)


def reload_problems(running: Server, new: Server) -> list[tuple[list[Segment], str]]:
    """TLS listener changes a reload cannot apply to listening sockets; each refuses the reload."""
    later = "; this takes a restart (reload refused, the running config keeps serving)"
    problems: list[tuple[list[Segment], str]] = []
    new_by_address = {listener.address: (index, listener) for index, listener in enumerate(new.listen)}
    running_tls = {listener.address: listener.tls for listener in running.listen if listener.tls is not None}
    for address, old in running_tls.items():
        found = new_by_address.get(address)
        if found is None:
            problems.append((["server", "listen"], f"the TLS listener {address} was removed{later}"))
            continue
        index, listener = found
        where: list[Segment] = ["server", "listen", index, "tls"]
        if listener.tls is None:
            problems.append((where[:-1], f"TLS was turned off on {address}{later}"))
        elif (old.client_ca is None) != (listener.tls.client_ca is None):
            problems.append(([*where, "client_ca"], f"asking for client certificates was turned on or off{later}"))
        elif old.client_ca is not None and old.client_cert != listener.tls.client_cert:
            problems.append(([*where, "client_cert"], f"client_cert changed from {old.client_cert}{later}"))
    for address, (index, listener) in new_by_address.items():
        if listener.tls is not None and address not in running_tls:
            problems.append((["server", "listen", index, "tls"], f"TLS on {address} is new{later}"))
    return problems
