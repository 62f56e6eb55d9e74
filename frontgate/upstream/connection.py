"""One keep-alive HTTP/1.1 connection to an upstream target.

It parses the response with httptools and hands events to the `ResponseReceiver` of the exchange it is
serving; it never buffers a body. Flow control is passed through in both directions: when this socket's
write buffer fills, the receiver pauses the client's reads, and the receiver pauses this socket's reads
when the client is slow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Set
from typing import Protocol, cast

import httptools
from mypy_extensions import mypyc_attr

from frontgate.errors import BadGateway, HttpError
from frontgate.protocol.http1 import HOP_BY_HOP, LAST_CHUNK, chunk, header_tokens

_NOT_RELAYED = HOP_BY_HOP | {b"content-length"}
_PLAIN_CONNECTION_VALUES = frozenset({b"keep-alive", b"close"})


@mypyc_attr(native_class=False)  # compiled (setup.py), a native class would not keep these class attributes
class UpstreamReset(BadGateway):
    """The upstream closed or reset the connection before the response was complete."""

    message = "The upstream service closed the connection."


@mypyc_attr(native_class=False)
class UpstreamProtocolError(BadGateway):
    message = "The upstream service gave an invalid response."


class ResponseReceiver(Protocol):
    grpc_status: int | None  # set by HTTP/2 upstreams from a response's `grpc-status`, for the accounting

    def response_head(self, status: int, lines: list[bytes], chunked: bool, content_length: int | None) -> None:
        """`lines` are the relayed headers, `name: value\r\n` with lowercase names, hop-by-hop ones gone."""
    def response_body(self, data: bytes) -> None: ...
    def response_trailers(self, lines: list[bytes]) -> None:
        """Trailer fields (gRPC's grpc-status), `name: value\r\n` lines; sent before `response_complete`."""
    def response_complete(self, reusable: bool) -> None: ...
    def upstream_failed(self, error: HttpError, response_started: bool) -> None: ...
    def upstream_write_paused(self, paused: bool) -> None: ...
    def flush(self) -> None: ...


class UpstreamChannel(Protocol):
    """What carries one request to an upstream for the exchange: an `UpstreamConnection`, or one stream of an
    HTTP/2 connection (frontgate/upstream/h2connection.py)."""

    @property
    def closed(self) -> bool: ...
    @property
    def uses(self) -> int:
        """Requests the underlying connection has carried, this one included: above 1, it was pooled."""
    @property
    def has_date(self) -> bool: ...
    @property
    def named_hop_by_hop(self) -> Set[bytes]: ...
    @property
    def response_started(self) -> bool: ...
    def start(self, receiver: ResponseReceiver, head: bytes, head_only: bool, chunked_body: bool) -> None: ...
    def write(self, data: bytes) -> None: ...
    def end_body(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def detach(self) -> None: ...
    def close(self) -> None: ...


class ProtocolSwitchReceiver(Protocol):
    def upstream_switched(self, lines: list[bytes], transport: asyncio.Transport, early: bytes) -> None:
        """The upstream answered 101 with `lines` (relayed headers, as for `response_head`): `transport` now
        belongs to the receiver, and `early` holds what the upstream sent right after the head."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_chunked",
        "_chunked_body",
        "_content_length",
        "_head_only",
        "_lines",
        "_parser",
        "_receiver",
        "_switch_receiver",
        "closed",
        "has_date",
        "idle_since",
        "named_hop_by_hop",
        "response_started",
        "transport",
        "uses",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._receiver: ResponseReceiver | None = None
        self._switch_receiver: ProtocolSwitchReceiver | None = None  # set only for an upgrade request
        self._lines: list[bytes] = []  # relayed response headers as `name: value\r\n`
        self.has_date = False  # the response carries its own Date
        self.named_hop_by_hop: set[bytes] = set()  # fields the response's Connection header names
        self._chunked = False
        self._content_length: int | None = None
        self._head_only = False
        self._chunked_body = False  # the request body goes out chunked
        self.response_started = False
        self.closed = False
        self.uses = 0  # requests sent; 0 means a fresh connection
        self.idle_since = 0.0  # when it went back to the pool

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self._receiver else "idle")
        return f"<UpstreamConnection {state} uses={self.uses}>"

    # --- used by the exchange ---------------------------------------------------------------------

    def start(self, receiver: ResponseReceiver, head: bytes, head_only: bool, chunked_body: bool) -> None:
        """Send a request head; `head_only` for HEAD requests, whose responses have no body. With
        `chunked_body` the head announced chunked framing and `write`/`end_body` frame the body so."""
        assert self.transport is not None
        self._receiver = receiver
        self._lines = []
        self.has_date = False
        self.named_hop_by_hop = set()
        self._chunked = False
        self._content_length = None
        self._head_only = head_only
        self._chunked_body = chunked_body
        self.response_started = False
        self.uses += 1
        self.transport.write(head)

    def accept_protocol_switch(self, receiver: ProtocolSwitchReceiver) -> None:
        """The request about to be sent asks to upgrade: a 101 then hands the socket to `receiver` instead of
        failing. Such a connection never goes back to the pool."""
        self._switch_receiver = receiver

    def write(self, data: bytes) -> None:
        """Request body bytes, framed as the head announced."""
        if self.transport is not None and not self.closed:
            self.transport.write(chunk(data) if self._chunked_body else data)

    def end_body(self) -> None:
        """The request body is complete."""
        if self._chunked_body and self.transport is not None and not self.closed:
            self.transport.write(LAST_CHUNK)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def detach(self) -> None:
        """The exchange no longer listens (client gone, timeout): this connection is closed."""
        self._receiver = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        receiver = self._receiver
        if receiver is None:
            # Bytes on an idle connection: the upstream broke framing or is closing; never reuse it.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            switch_receiver = self._switch_receiver
            if switch_receiver is not None and self._parser.get_status_code() == 101:
                self._switch(switch_receiver, data[upgrade.args[0]:] if upgrade.args else b"")
            else:
                self._fail(UpstreamProtocolError("The upstream service switched protocols unexpectedly."))
        except httptools.HttpParserError:
            self._fail(UpstreamProtocolError())
        receiver.flush()  # what this packet produced goes to the client in one write

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        receiver = self._receiver
        if receiver is None:
            return
        self._receiver = None
        if self.response_started and self._content_length is None and not self._chunked:
            # A response framed by connection close has ended properly.
            receiver.response_complete(False)
        else:
            receiver.upstream_failed(UpstreamReset(), self.response_started)
        receiver.flush()

    def pause_writing(self) -> None:
        if self._receiver is not None:
            self._receiver.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self._receiver is not None:
            self._receiver.upstream_write_paused(False)

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response_started:
            return  # trailers: not relayed over HTTP/1.1
        name = name.lower()
        if name in _NOT_RELAYED:
            # Framing is redone by the gateway and hop-by-hop fields end here (RFC 9110 §7.6.1).
            if name == b"content-length":
                self._content_length = int(value)
            elif name == b"transfer-encoding":
                self._chunked = value.strip().lower().endswith(b"chunked")
            elif name == b"connection" and value.lower() not in _PLAIN_CONNECTION_VALUES:
                self.named_hop_by_hop.update(header_tokens(value))
            return
        if name == b"date":
            self.has_date = True
        self._lines.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101 and self._switch_receiver is not None:
                return  # the head is kept for the receiver: data_received hands the socket over
            # 1xx interim responses are consumed here; the gateway answers 100-continue itself.
            self._lines = []
            self.has_date = False
            self.named_hop_by_hop = set()
            self._content_length = None
            self._chunked = False
            return
        self.response_started = True
        receiver = self._receiver
        if receiver is not None:
            receiver.response_head(status, self._lines, self._chunked, self._content_length)
        if self._head_only and self._receiver is not None:
            # llhttp cannot be told this answers a HEAD, so it would wait for the announced body. The
            # exchange ends here and the next response starts on a fresh parser.
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._receiver is not None and not self._head_only:
            self._receiver.response_body(body)

    def on_message_complete(self) -> None:
        if self.response_started and self._receiver is not None:
            self._finish()

    def _finish(self) -> None:
        receiver = self._receiver
        self._receiver = None
        reusable = self._parser.should_keep_alive() and not self.closed
        if self._head_only:
            self._parser = httptools.HttpResponseParser(self)
        if receiver is not None:
            receiver.response_complete(reusable)

    def _switch(self, switch_receiver: ProtocolSwitchReceiver, early: bytes) -> None:
        self._receiver = None
        self.closed = True  # the socket is no longer this object's to read, write, reuse or close
        assert self.transport is not None
        switch_receiver.upstream_switched(self._lines, self.transport, early)

    def _fail(self, error: HttpError) -> None:
        receiver = self._receiver
        self._receiver = None
        self.close()
        if receiver is not None:
            receiver.upstream_failed(error, self.response_started)
