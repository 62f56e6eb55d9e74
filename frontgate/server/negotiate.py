"""Which protocol a client connection speaks: HTTP/2 by ALPN on TLS listeners with `http2: true`, by the
prior-knowledge preface on cleartext listeners with `h2c: true`, else HTTP/1.1."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from frontgate.server.h2 import H2Connection

if TYPE_CHECKING:
    from frontgate.server.gateway import Gateway

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class AlpnSwitch(asyncio.Protocol):
    """A TLS listener offering h2: once the handshake chose a protocol, hand the transport to HTTP/2 or
    HTTP/1.1."""

    def __init__(self, gateway: Gateway, scheme: str) -> None:
        self.gateway = gateway
        self.scheme = scheme

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from frontgate.server.tls_connection import TlsConnection

        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.Protocol
        if chosen == "h2":
            protocol = H2Connection(self.gateway, self.scheme)
        else:
            protocol = TlsConnection(self.gateway, self.scheme)
        cast(asyncio.Transport, transport).set_protocol(protocol)
        protocol.connection_made(transport)


class PriorKnowledgeSniffer(asyncio.Protocol):
    """A cleartext listener with `h2c: true`: the HTTP/2 preface means HTTP/2, anything else HTTP/1.1."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self._seen = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        read_header = self.gateway.runtime.config.server.timeouts.read_header
        self._timer = self.gateway.loop.call_later(read_header, self.transport.close)

    def data_received(self, data: bytes) -> None:
        from frontgate.server.connection import HttpConnection

        seen = self._seen = self._seen + data
        shared = min(len(seen), len(PREFACE))
        protocol: asyncio.Protocol
        if seen[:shared] != PREFACE[:shared]:
            protocol = HttpConnection(self.gateway, "http")
        elif len(seen) >= len(PREFACE):
            protocol = H2Connection(self.gateway, "http")
        else:
            return  # a preface arriving in pieces
        if self._timer is not None:
            self._timer.cancel()
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(seen)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
