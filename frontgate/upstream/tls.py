"""TLS to upstream services: `https://` targets are verified against `upstreams.X.tls.ca` (the system store
when absent) under the name in `tls.server_name` (the target's host by default), optionally presenting the
gateway's own certificate (`tls.cert` / `tls.key`, mTLS to the service). One context per upstream, shared
by its pools and its health checks."""

from __future__ import annotations

import ssl

from frontgate.config.schema import Upstream, UpstreamTls
from frontgate.tls.files import TlsFileError, read_certificate_pair, read_certificates


def needs_tls(config: Upstream) -> bool:
    return any(target.url.startswith("https://") for target in config.weighted_targets)


def upstream_tls_context(config: Upstream) -> ssl.SSLContext | None:
    """None when no target is https://; raises TlsFileError (path relative to `tls`) for a bad file."""
    if not needs_tls(config):
        return None
    tls = config.tls or UpstreamTls()
    if tls.ca:
        read_certificates(tls.ca, "ca")
    try:
        context = ssl.create_default_context(cafile=tls.ca)  # only `ca` when given, else the system store
    except ssl.SSLError as exc:
        raise TlsFileError("ca", f"'{tls.ca}' cannot be used: {exc.reason or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # HTTP/2 upstreams (protocol: http2 | grpc) need h2; the pool refuses a target that does not pick it.
    context.set_alpn_protocols(["h2"] if config.protocol != "http" else ["http/1.1"])
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert and tls.key:
        read_certificate_pair(tls.cert, tls.key)
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except ssl.SSLError as exc:
            raise TlsFileError("cert", f"'{tls.cert}' cannot be used: {exc.reason or exc}") from None
    return context


def upstream_problems(config: Upstream) -> list[TlsFileError]:
    """Every unusable file of an upstream's `tls`, each with its path relative to `tls`."""
    tls = config.tls
    if tls is None:
        return []
    problems: list[TlsFileError] = []
    if tls.ca:
        try:
            read_certificates(tls.ca, "ca")
        except TlsFileError as error:
            problems.append(error)
    if tls.cert and tls.key:
        try:
            read_certificate_pair(tls.cert, tls.key)
        except TlsFileError as error:
            problems.append(error)
    if not problems:
        try:
            upstream_tls_context(config)
        except TlsFileError as error:
            problems.append(error)
    return problems


def handshake_failure(exc: BaseException) -> str:
    """Why a TLS handshake with an upstream failed, in words for the log."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return str(exc)
