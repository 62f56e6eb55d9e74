"""A downstream connection on a TLS listener. It reads the verified client certificate (mTLS) once, when
the handshake is done, and hands it to every request of the connection: `ctx.client_cert` for the plugins
(`mtls`, `allow.subjects`) and the `X-Forwarded-Client-Cert` header for the upstream. Plain HTTP listeners
use `HttpConnection` itself, so none of this costs them anything."""

from __future__ import annotations

import asyncio
import ssl

from frontgate.server.connection import HttpConnection
from frontgate.server.exchange import Exchange
from frontgate.tls.client_cert import ClientCertificate, client_certificate


class TlsConnection(HttpConnection):
    client_cert: ClientCertificate | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once the handshake is complete. A certificate is there only if the listener asked for one
        # and it verified against client_ca: a certificate that does not verify fails the handshake.
        ssl_object = transport.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                self.client_cert = client_certificate(der)
        super().connection_made(transport)

    def _new_exchange(self) -> Exchange:
        exchange = super()._new_exchange()
        cert = self.client_cert
        if cert is not None:
            ctx = exchange.ctx
            ctx.client_cert = cert
            # The client's own copy of the header was dropped while parsing (see connection.py).
            ctx.set_header_lines([*ctx.header_lines(), cert.header_line])
        return exchange
