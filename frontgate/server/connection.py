"""The downstream HTTP/1.1 connection: an asyncio.Protocol fed to httptools.

It turns bytes into request heads (applying the limits and strictness rules), routes each head against
the current Runtime snapshot, and hands the request to an `Exchange`. Pipelined requests are answered in
order, one at a time. Any protocol error becomes its 4xx and closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import httptools
from mypy_extensions import mypyc_attr

from frontgate.config.compile import ROUTE_CACHE_SIZE
from frontgate.errors import (
    BadRequest,
    HeadersTooLarge,
    HttpError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    UriTooLong,
)
from frontgate.pipeline.context import RequestContext, new_request_id
from frontgate.protocol.http1 import (
    HOP_BY_HOP,
    RequestFraming,
    error_body,
    host_without_port,
    inspect_request_head,
    render_response,
    valid_host,
)
from frontgate.protocol.websocket import is_websocket_handshake
from frontgate.routing.normalize import normalize_path, parse_absolute_form
from frontgate.server.exchange import Exchange, local_reply_head
from frontgate.server.forwarding import FORWARDING_FIELDS, add_forwarding_headers, client_address, forwarded_node
from frontgate.server.websocket import WebSocketHandshake
from frontgate.tls.client_cert import XFCC_HEADER

if TYPE_CHECKING:
    from frontgate.config.compile import CompiledRoute
    from frontgate.server.gateway import Gateway

log = logging.getLogger("frontgate.connection")

# How each request field is sorted as it is parsed (one pass, no second loop over the headers):
# framing fields are inspected (and re-made by the gateway), forwarding fields are believed only from
# trusted proxies, hop-by-hop fields and the gateway's own are dropped, the rest is forwarded. Upgrade is
# hop-by-hop but inspected: a WebSocket handshake is relayed (frontgate/server/websocket.py).
_FRAMING_FIELDS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"})
_DROPPED = HOP_BY_HOP | {b"x-request-deadline", XFCC_HEADER}  # XFCC: only the gateway sets it
# The sorts of field as one lookup per field (most fields are none of them, and are forwarded).
_FRAMING, _FORWARDING, _DROP, _TRACE_CONTEXT = 1, 2, 3, 4
_FIELD_SORT = {
    **{name: _DROP for name in _DROPPED},
    b"traceparent": _TRACE_CONTEXT,  # forwarded as any field; noted so that most requests skip looking for it
    b"tracestate": _TRACE_CONTEXT,
    **{name: _FORWARDING for name in FORWARDING_FIELDS},
    **{name: _FRAMING for name in _FRAMING_FIELDS},  # framing wins: Connection and Upgrade are inspected
}
_NEVER = float("inf")
_PLAIN_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive"})
_NO_FRAMING = RequestFraming(None, False, None, False, False, frozenset())
_CACHED_PATH_BYTES = 256
_COPY_LIMIT = 8192  # response pieces are joined into one write below this size, handed over as they are above
_METHOD_NAMES = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


# What the connection waits for from the client, each with its own deadline (server.timeouts).
WAIT_NOTHING, WAIT_HEAD, WAIT_BODY, WAIT_IDLE = 0, 1, 2, 3
# A head is parsed from at most this many times the header limit of raw bytes before it is refused: it
# bounds what httptools buffers for one huge header line.
_HEAD_SLACK = 1024


@mypyc_attr(allow_interpreted_subclasses=True)  # TlsConnection extends it
class HttpConnection(asyncio.Protocol):
    _after_handshake = b""  # what the client sent after a WebSocket handshake, kept for the tunnel

    def __init__(self, gateway: Gateway, scheme: str = "http") -> None:
        self.gateway = gateway
        self.loop = gateway.loop
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self._forwarding_lines: tuple[bytes, ...] = ()
        self._forwarding_for: bytes | None = b"\0"  # the Host the lines above were made for
        self._forwarded_node = b""
        self._parser = httptools.HttpRequestParser(self)
        self._limits = gateway.runtime.config.server.limits
        self._timeouts = gateway.runtime.config.server.timeouts
        # The head being parsed.
        self._in_head = False
        self._url = b""
        self._lines: list[bytes] = []  # forwardable headers as `name: value\r\n`
        self._framing_fields: list[tuple[bytes, bytes]] = []
        self._forwarding_fields: list[tuple[bytes, bytes]] = []
        self._trace_context = False  # the head being parsed has a traceparent or tracestate field
        self._header_count = 0
        self._head_bytes = 0
        self._error: HttpError | None = None
        # Exchanges: the one receiving body events, the one being answered, and those waiting their turn.
        self._parsing: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._deferred_error: HttpError | None = None
        self._paused_for: set[str] = set()
        # Deadlines are plain timestamps checked by the gateway's sweeper: no timer per request.
        self.waiting = WAIT_NOTHING
        self.wait_deadline = _NEVER
        self._closing = False
        self._last_host_field: bytes | None = None
        self._last_host = ""
        self._last_framing = _NO_FRAMING  # used only once _last_host_field matched a request
        self.out: list[bytes] = []  # response bytes queued for one write (see flush)
        self.requests = 0

    @property
    def active(self) -> Exchange | None:
        """The exchange being answered now."""
        return self._active

    @property
    def draining(self) -> bool:
        return self.gateway.draining

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer_ip = peer[0] if peer else ""
        self._forwarded_node = forwarded_node(peer_ip, self.scheme)
        gateway = self.gateway
        if len(gateway.connections) + len(gateway.tunnels) >= self._limits.max_connections or gateway.draining:
            transport.abort()
            return
        gateway.connections.add(self)
        self._wait(WAIT_HEAD, self._timeouts.read_header)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.waiting = WAIT_NOTHING
        self.gateway.connections.discard(self)
        for exchange in (self._active, self._parsing, *self._queue):
            if exchange is not None and not exchange.finished:
                exchange.abort()
        self._queue.clear()
        self._active = self._parsing = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade(data, upgrade)
            return
        except httptools.HttpParserCallbackError:
            self._protocol_error(self._error or BadRequest())
            return
        except httptools.HttpParserError:
            self._protocol_error(BadRequest())
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes + _HEAD_SLACK:
                self._protocol_error(HeadersTooLarge())

    def eof_received(self) -> bool | None:
        # The client half-closed. Let a request in flight finish writing its answer, then close.
        if self._active is not None or self._queue:
            return True
        return None

    def pause_writing(self) -> None:
        if self._active is not None:
            self._active.client_write_paused(True)

    def resume_writing(self) -> None:
        if self._active is not None:
            self._active.client_write_paused(False)

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._lines = []
        self._framing_fields = []
        self._forwarding_fields = []
        self._trace_context = False
        self._header_count = 0
        self._head_bytes = 0
        if self.waiting != WAIT_HEAD:
            self.waiting = WAIT_HEAD
            self.wait_deadline = self.loop.time() + self._timeouts.read_header

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_uri_bytes:
            self._raise(UriTooLong())

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # chunked trailers: accepted, never forwarded
        self._header_count += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._header_count > self._limits.max_headers or self._head_bytes > self._limits.max_header_bytes:
            self._raise(HeadersTooLarge())
        name = name.lower()
        sort = _FIELD_SORT.get(name)
        if sort is None:
            self._lines.append(name + b": " + value + b"\r\n")
        elif sort == _FRAMING:
            self._framing_fields.append((name, value))
        elif sort == _FORWARDING:
            self._forwarding_fields.append((name, value))
        elif sort == _TRACE_CONTEXT:
            self._lines.append(name + b": " + value + b"\r\n")
            self._trace_context = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.requests += 1
        try:
            exchange = self._new_exchange()
        except HttpError as error:
            if error.close_connection:
                self._raise(error)
            raise
        self._parsing = exchange
        if exchange.body_complete:
            self.waiting = WAIT_NOTHING
        else:
            self._wait(WAIT_BODY, self._timeouts.read_body)
        if self._active is None:
            self._active = exchange
            exchange.start()
        else:
            self._queue.append(exchange)
            self.pause_reading_for("pipeline")

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self.wait_deadline = self.loop.time() + self._timeouts.read_body  # the body is still coming
            self._parsing.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self._parsing
        self._parsing = None
        if self.waiting == WAIT_BODY:
            self.waiting = WAIT_NOTHING
            self.wait_deadline = _NEVER
        if exchange is not None and not exchange.body_complete:
            exchange.request_complete()

    def _raise(self, error: HttpError) -> None:
        """Abort parsing from inside a callback; data_received answers with `error`."""
        self._error = error
        raise error

    # --- building the request ---------------------------------------------------------------------

    def _new_exchange(self) -> Exchange:
        parser = self._parser
        raw_method = parser.get_method()
        method = _METHOD_NAMES.get(raw_method) or raw_method.decode("ascii")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise BadRequest("Unsupported HTTP version.")
        if method == "CONNECT":
            raise BadRequest("CONNECT is not supported.")
        fields = self._framing_fields
        if len(fields) == 1 and fields[0][1] == self._last_host_field and version == "1.1" and fields[0][0] == b"host":
            framing = self._last_framing  # keep-alive clients repeat the same plain head: checked once
        else:
            framing = inspect_request_head(fields, version)
            if framing.host is not None and framing.content_length is None and not framing.chunked \
                    and framing.keep_alive and not framing.expect_continue and not framing.connection_tokens:
                self._last_framing = framing
                self._last_host_field = framing.host
                self._last_host = host_without_port(framing.host)
        runtime = self.gateway.runtime

        raw_target = self._url
        if b"#" in raw_target:
            raise BadRequest("A request target cannot carry a fragment.")  # RFC 9112 §3.2
        if raw_target.startswith(b"/"):
            raw_path, _, query = raw_target.partition(b"?")
        elif raw_target.startswith((b"http://", b"https://")):
            authority, raw_path, query = parse_absolute_form(raw_target)
            # RFC 9112 §3.2.2: the target's authority replaces Host. Only hosts we route are proxied:
            # the gateway is not an open forward proxy.
            if not valid_host(authority) or not runtime.host_declared(host_without_port(authority)):
                raise BadRequest("Absolute-form requests are accepted only for hosts the gateway routes.")
            framing = replace(framing, host=authority)  # a copy: the plain framing may be cached
        else:
            raise BadRequest("The request target must be an absolute path.")
        host_field = framing.host
        if host_field is None:
            host = ""
        elif host_field == self._last_host_field:
            host = self._last_host
        else:
            host = host_without_port(host_field)
        cache_key = (method, host, raw_path)
        cached = None if runtime.routes_on_headers else runtime.route_cache.get(cache_key)
        if cached is None:
            path = normalize_path(raw_path)
            route: CompiledRoute | None = None
        else:
            path, route = cached

        lines = self._lines
        websocket = False
        if framing.connection_tokens:
            named = framing.connection_tokens - _PLAIN_CONNECTION_TOKENS
            if named:  # `Connection: x-foo` makes x-foo hop-by-hop too
                lines = [line for line in lines if line[: line.index(b":")] not in named]
                websocket = is_websocket_handshake(method, version, framing)
        ctx = RequestContext(method, path, query, None, host, self.peer_ip, self.peer_ip, self.scheme, version, lines)
        if not self._trace_context:
            ctx.trace_context = False
        client_fields = self._forwarding_fields
        if client_fields and runtime.is_trusted(self.peer_ip):
            ctx.client_ip = client_address(self.peer_ip, client_fields, runtime.is_trusted)
            add_forwarding_headers(ctx.headers, client_fields, self.peer_ip, self.scheme, framing.host)
        else:
            # The common case, from bytes made once per connection: the chain starts at this peer.
            if host_field != self._forwarding_for:
                self._forwarding_lines = self._make_forwarding_lines(host_field)
                self._forwarding_for = host_field
            lines += self._forwarding_lines

        if route is None:
            on_headers = runtime.routes_on_headers
            try:
                route = runtime.match_route(ctx)
            except (NotFound, MethodNotAllowed) as error:
                return Exchange(self, runtime, ctx, framing, None, error)
            # Not cached: long, rare paths (they would crowd the cache), and OPTIONS (a CORS preflight is
            # routed by its headers).
            if not on_headers and len(raw_path) <= _CACHED_PATH_BYTES and method != "OPTIONS":
                if len(runtime.route_cache) >= ROUTE_CACHE_SIZE:
                    runtime.route_cache.clear()  # crude but bounded: a hot set refills it at once
                runtime.route_cache[cache_key] = (path, route)
        ctx.route = route
        if framing.content_length is not None and framing.content_length > route.max_body_bytes:
            raise PayloadTooLarge()  # before reading a byte of it
        if websocket and route.websocket is not None:
            return WebSocketHandshake(self, runtime, ctx, framing, route, None)
        return Exchange(self, runtime, ctx, framing, route, None)

    def _make_forwarding_lines(self, host_field: bytes | None) -> tuple[bytes, ...]:
        """This hop's forwarding fields as header lines (one element per line: ctx.headers splits them),
        made once per connection and Host."""
        lines = [b"x-forwarded-for: " + self.peer_ip.encode("ascii") + b"\r\n",
                 b"x-forwarded-proto: " + self.scheme.encode("ascii") + b"\r\n"]
        if host_field:
            # Host was validated (no quotes or backslashes), so it can be quoted as it is.
            lines.append(b"x-forwarded-host: " + host_field + b"\r\n")
            lines.append(b"forwarded: " + self._forwarded_node + b';host="' + host_field + b'"\r\n')
        else:
            lines.append(b"forwarded: " + self._forwarded_node + b"\r\n")
        return tuple(lines)

    # --- flow control -----------------------------------------------------------------------------

    def pause_reading_for(self, reason: str) -> None:
        if not self._paused_for and self.transport is not None and not self._closing:
            self.transport.pause_reading()
        self._paused_for.add(reason)

    def resume_reading_for(self, reason: str) -> None:
        if reason in self._paused_for:
            self._paused_for.discard(reason)
            if not self._paused_for and self.transport is not None and not self._closing:
                self.transport.resume_reading()

    # --- writing ----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self._closing and self.transport is not None:
            if self.out:
                self.flush()
            self.transport.write(data)

    def flush(self) -> None:
        """Send what the exchange queued in `out`. The upstream connection flushes once per packet it
        handled, so a small response costs one syscall instead of head and body apart."""
        out = self.out
        if out:
            self.out = []
            if not self._closing and self.transport is not None:
                if len(out) == 1:
                    self.transport.write(out[0])
                elif len(out[-1]) < _COPY_LIMIT:
                    self.transport.write(b"".join(out))
                else:
                    self.transport.writelines(out)  # one writev: a large body is not copied into a joined buffer

    def send_error(self, exchange: Exchange, error: HttpError) -> None:
        body = error_body(error, exchange.ctx.request_id)
        self.send_local(
            exchange, error.status, body, list(error.headers), b"application/json", error.close_connection
        )

    def send_local(
        self,
        exchange: Exchange,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        content_type: bytes | None,
        force_close: bool = False,
    ) -> None:
        """A reply the gateway makes itself. Response hooks still run (request id echo, CORS, ...)."""
        head = local_reply_head(exchange, status, headers)
        close = force_close or not exchange.keep_alive or not exchange.body_complete or self.gateway.draining
        self.write(render_response(head.status, body, head.headers, content_type, close, self.gateway.date_line,
                                   exchange.head_only))
        exchange.bytes_out = len(body)
        exchange.mark_local_reply_done(head.status)
        exchange.keep_alive = not close
        self.exchange_finished(exchange)

    def exchange_finished(self, exchange: Exchange) -> None:
        self.gateway.observe(exchange)
        if exchange is not self._active:
            return
        self._active = None
        if not exchange.keep_alive or not exchange.body_complete or self.gateway.draining:
            self.close()
            return
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            self._answer_and_close(error)
            return
        if self._queue:
            nxt = self._queue.popleft()
            self._active = nxt
            if not self._queue:
                self.resume_reading_for("pipeline")
            nxt.start()
        else:
            self.waiting = WAIT_IDLE
            self.wait_deadline = self.loop.time() + self._timeouts.idle

    def abort_exchange(self, exchange: Exchange) -> None:
        """The response cannot be completed: flush what was sent and close, so the client sees it cut."""
        self.gateway.observe(exchange)
        self.close()

    def _protocol_error(self, error: HttpError) -> None:
        """A request that cannot be parsed: answer it (after any request still being answered) and close."""
        self.pause_reading_for("error")
        parsing, active = self._parsing, self._active
        self._parsing = None
        if parsing is not None and parsing is active and not active.finished:
            # The broken bytes are this request's own body: it can never be complete. The upstream (which
            # saw at most an unfinished body) is cut off; the client gets the error, then the close.
            active.fail(error)
            self.close()
            return
        if parsing is not None:
            self._queue = deque(e for e in self._queue if e is not parsing)
        if active is not None:
            self._deferred_error = error
            return
        if not error.close_connection:
            error = BadRequest()
        self.gateway.count_protocol_error(error.status)
        self._answer_and_close(error)

    def _answer_and_close(self, error: HttpError) -> None:
        """An error outside any exchange (the request never became one): answer it and close."""
        body = error_body(error, new_request_id())
        self.write(render_response(error.status, body, list(error.headers), b"application/json", True,
                                   self.gateway.date_line))
        self.close()

    def _after_upgrade(self, data: bytes, upgrade: httptools.HttpParserUpgrade) -> None:
        if self._closing:
            return
        offset = upgrade.args[0] if upgrade.args else len(data)
        rest = data[offset:]
        last = self._queue[-1] if self._queue else self._active
        if isinstance(last, WebSocketHandshake):
            # The upstream decides. Until it does, what the client sends next waits in the socket: WebSocket
            # frames if the upstream says 101, else the connection closes after its answer.
            self._after_handshake = rest
            self.pause_reading_for("upgrade")
            return
        # Any other upgrade was served as plain HTTP (Upgrade is hop-by-hop and dropped). Whatever followed
        # the request starts a fresh parse.
        self._parser = httptools.HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    def hand_over(self, exchange: Exchange) -> tuple[asyncio.Transport, bytes] | None:
        """`exchange`, the last request on this connection, switched protocols: the socket leaves HTTP for a
        tunnel. Returns its transport and what the client sent after the handshake; None if it is gone."""
        transport = self.transport
        if self._closing or transport is None or exchange is not self._active:
            return None
        self.flush()
        self._closing = True  # nothing of HTTP reads, writes or times out this socket any more
        self.waiting = WAIT_NOTHING
        self._active = None
        self.gateway.connections.discard(self)
        early, self._after_handshake = self._after_handshake, b""
        return transport, early

    def close(self) -> None:
        if not self._closing:
            self.flush()
            self._closing = True
            self.waiting = WAIT_NOTHING
            if self.transport is not None:
                self.transport.close()

    # --- deadlines -------------------------------------------------------------------------------

    def _wait(self, what: int, seconds: float) -> None:
        self.waiting = what
        self.wait_deadline = self.loop.time() + seconds

    def check_deadlines(self, now: float) -> None:
        """Called by the gateway's sweeper when a deadline of this connection or its exchange passed."""
        if self.waiting and self.wait_deadline <= now:
            waiting = self.waiting
            self.waiting = WAIT_NOTHING
            self.wait_deadline = _NEVER
            if waiting == WAIT_HEAD:
                if self._in_head and self._active is None:
                    self._answer_and_close(RequestTimeout())  # half a head: say why before closing
                self.close()
            elif waiting == WAIT_IDLE:
                self.close()
            else:
                exchange = self._parsing
                if exchange is not None and exchange is self._active and not exchange.finished:
                    exchange.fail(RequestTimeout("The request body was not received in time."))
                self.close()
        exchange = self._active
        if exchange is not None and exchange.deadline <= now:
            exchange.check_deadline(now)

    def drain(self) -> None:
        """Shutdown started: idle connections close now, busy ones after their current response."""
        if self._active is None and not self._in_head:
            self.close()
