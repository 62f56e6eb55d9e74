"""The downstream HTTP/2 connection (RFC 9113): ALPN `h2` on TLS listeners with `http2: true`, and cleartext
prior knowledge on listeners with `h2c: true`.

Frames, HPACK and the flow-control arithmetic come from the `h2` library. Every stream becomes the same
`Exchange` an HTTP/1.1 request does (same routing, plugins, limits, upstreams and accounting); only how the
response is written differs (`H2Exchange`), and each stream stands in for the connection the exchange
talks to (`H2Stream`). Back-pressure is per stream: a request body is acknowledged (WINDOW_UPDATE) only
once the exchange took it, and a response waits for the client's window while its upstream is paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

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
from frontgate.protocol.grpc_status import grpc_error_trailers, grpc_status_for, is_grpc
from frontgate.protocol.http1 import (
    HOP_BY_HOP,
    RequestFraming,
    error_body,
    host_without_port,
    split_lines,
    valid_host,
)
from frontgate.routing.normalize import normalize_path
from frontgate.server.exchange import Exchange, local_reply_head
from frontgate.server.forwarding import FORWARDING_FIELDS, add_forwarding_headers, client_address
from frontgate.tls.client_cert import XFCC_HEADER, ClientCertificate, client_certificate

if TYPE_CHECKING:
    from frontgate.server.gateway import Gateway

log = logging.getLogger("frontgate.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 256 * 1024  # what one stream's client may send ahead of us (request bodies)
CONNECTION_WINDOW = 1024 * 1024
# Response bytes waiting for the client's window; beyond this the stream's upstream stops being read.
SEND_HIGH_WATER = 64 * 1024
_NEVER = float("inf")
# XFCC: only the gateway sets it, from the verified certificate.
_DROPPED = HOP_BY_HOP | {b"x-request-deadline", b"host", b"content-length", XFCC_HEADER}
_NO_TOKENS: frozenset[bytes] = frozenset()
_METHOD_NAMES = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class H2Exchange(Exchange):
    """An exchange whose response is written as HTTP/2 frames on its stream."""

    conn: H2Stream
    # The head of a response announced empty, held until the end: a gRPC trailers-only response (an
    # upstream's error status) must reach the client as one HEADERS frame with END_STREAM, which gRPC
    # clients require; HEADERS and then an empty DATA frame would read as a broken stream.
    _held_head: list[tuple[bytes, bytes]] | None = None

    def _send_head(self, status: int, lines: list[bytes], content_length: int | None, has_date: bool) -> None:
        fields = [(b":status", b"%d" % status), *split_lines(lines)]
        if content_length is not None:
            fields.append((b"content-length", b"%d" % content_length))
        if not has_date:
            fields.append((b"date", self.conn.gateway.date_line[6:-2]))
        if content_length == 0 and not self.head_only:
            self._held_head = fields
            return
        self.conn.send_headers(fields, end_stream=self.head_only)

    def _send_held_head(self) -> None:
        fields, self._held_head = self._held_head, None
        if fields is not None:
            self.conn.send_headers(fields, end_stream=False)

    def response_body(self, data: bytes) -> None:
        if self.finished:
            return
        if self._held_head is not None:
            self._send_held_head()
        self.bytes_out += len(data)
        self.last_upstream_activity = self.conn.loop.time()
        self.conn.send_data(data)

    def response_trailers(self, lines: list[bytes]) -> None:
        if not self.finished:
            self.conn.trailers = split_lines(lines)

    def _send_end(self) -> None:
        held = self._held_head
        if held is not None and self.conn.trailers is None:
            self._held_head = None
            self.conn.send_headers(held, end_stream=True)  # trailers-only
            return
        self._send_held_head()
        self.conn.end_response()


class H2Stream:
    """One request stream: what its exchange sees as the client connection."""

    exchange: H2Exchange | None = None
    trailers: list[tuple[bytes, bytes]] | None = None
    body_deadline = _NEVER  # the request body must keep coming (server.timeouts.read_body)

    def __init__(self, connection: H2Connection, stream_id: int, grpc: bool) -> None:
        self.connection = connection
        self.gateway = connection.gateway
        self.loop = connection.loop
        self.stream_id = stream_id
        self.grpc = grpc
        self.out: list[bytes] = []  # the HTTP/1.1 exchange's buffer; never used over HTTP/2
        self._queued: deque[bytes] = deque()
        self._queued_bytes = 0
        self._end_queued = False
        self._headers_sent = False
        self.response_done = False  # END_STREAM (or RST_STREAM) sent
        self.request_done = False  # the client's END_STREAM came (or the stream was reset)
        self._paused_for: set[str] = set()
        self._unacked = 0
        self._upstream_paused = False

    # --- the request side --------------------------------------------------------------------------

    def request_data(self, data: bytes, flow_controlled: int) -> None:
        exchange = self.exchange
        if data and exchange is not None and not exchange.body_complete:  # (an empty chunk would end the body)
            self.body_deadline = self.loop.time() + self.connection.timeouts.read_body
            exchange.request_body(data)
        if self._paused_for:
            self._unacked += flow_controlled  # acknowledged when the exchange resumes reading
        else:
            self.connection.acknowledge(flow_controlled, self.stream_id)

    def request_ended(self) -> None:
        self.request_done = True
        self.body_deadline = _NEVER
        exchange = self.exchange
        if exchange is not None and not exchange.body_complete:
            exchange.request_complete()
        if self.response_done:
            self.connection.forget(self)

    def pause_reading_for(self, reason: str) -> None:
        self._paused_for.add(reason)

    def resume_reading_for(self, reason: str) -> None:
        self._paused_for.discard(reason)
        if not self._paused_for and self._unacked:
            unacked, self._unacked = self._unacked, 0
            self.connection.acknowledge(unacked, self.stream_id)
            self.connection.flush()

    # --- the response side -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Raw HTTP/1.1 bytes (only `100 Continue`): never asked for over HTTP/2."""

    def flush(self) -> None:
        self.connection.flush()

    def send_headers(self, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if self.response_done:
            return
        self._headers_sent = True
        self.connection.h2.send_headers(self.stream_id, fields, end_stream=end_stream)
        if end_stream:
            self._response_ended()

    def send_data(self, data: bytes) -> None:
        if self.response_done or not data:
            return
        self._queued.append(data)
        self._queued_bytes += len(data)
        self.push()

    def end_response(self) -> None:
        if not self.response_done:
            self._end_queued = True
            self.push()

    def push(self) -> None:
        """Send what the client's flow-control window allows; end the stream when all is out."""
        if self.response_done:
            return
        h2c = self.connection.h2
        stream_id = self.stream_id
        queued = self._queued
        try:
            while queued:
                room = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
                if room <= 0:
                    break
                data = queued[0]
                if len(data) > room:
                    piece, queued[0] = data[:room], data[room:]
                else:
                    piece = queued.popleft()
                self._queued_bytes -= len(piece)
                h2c.send_data(stream_id, piece)
            if not queued and self._end_queued:
                if self.trailers is not None:
                    h2c.send_headers(stream_id, self.trailers, end_stream=True)
                else:
                    h2c.end_stream(stream_id)
                self._response_ended()
                return
        except h2.exceptions.StreamClosedError:
            self._gone()
            return
        paused = self._queued_bytes > SEND_HIGH_WATER
        if paused != self._upstream_paused and self.exchange is not None:
            self._upstream_paused = paused
            self.exchange.client_write_paused(paused)

    def _response_ended(self) -> None:
        self.response_done = True
        self._queued.clear()
        if self.request_done:
            self.connection.forget(self)
        else:
            # The answer came before the whole request body (an early error, or an upstream that did not
            # wait): the rest is not wanted (RFC 9113 §8.1).
            self.connection.reset(self, h2.errors.ErrorCodes.NO_ERROR)

    def _gone(self) -> None:
        self.response_done = self.request_done = True
        self._queued.clear()
        self.connection.forget(self)

    # --- what the exchange calls at its end ----------------------------------------------------------

    def send_error(self, exchange: Exchange, error: HttpError) -> None:
        if self.grpc and not self._headers_sent:
            # A gRPC client understands statuses, not JSON: a trailers-only response (HTTP 200).
            head = local_reply_head(exchange, 200, [])
            fields = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                      *grpc_error_trailers(error), *head.headers]
            self.send_headers(fields, end_stream=True)
            exchange.grpc_status = grpc_status_for(error.status)  # the access log and metrics show what was sent
            exchange.mark_local_reply_done(error.status)
            self.exchange_finished(exchange)
            self.flush()
            return
        body = error_body(error, exchange.ctx.request_id)
        self.send_local(exchange, error.status, body, list(error.headers), b"application/json")

    def send_local(
        self,
        exchange: Exchange,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        content_type: bytes | None,
        force_close: bool = False,
    ) -> None:
        """A reply the gateway makes itself; response hooks run as over HTTP/1.1."""
        head = local_reply_head(exchange, status, headers)
        fields = [(b":status", b"%d" % head.status), (b"date", self.gateway.date_line[6:-2])]
        fields += [(name.lower(), value) for name, value in head.headers if name.lower() not in HOP_BY_HOP]
        if content_type is not None and body:
            fields.append((b"content-type", content_type))
        if head.status != 204 and head.status != 304:
            fields.append((b"content-length", b"%d" % len(body)))
        send_body = bool(body) and not exchange.head_only
        self.send_headers(fields, end_stream=not send_body)
        if send_body:
            self.send_data(body)
            self.end_response()
        exchange.bytes_out = len(body)
        exchange.mark_local_reply_done(head.status)
        self.exchange_finished(exchange)
        self.flush()

    def exchange_finished(self, exchange: Exchange) -> None:
        self.gateway.observe(exchange)

    def abort_exchange(self, exchange: Exchange) -> None:
        """The response was cut after it started: the client sees the stream reset, never a whole-looking
        response."""
        self.gateway.observe(exchange)
        if not self.response_done:
            self.response_done = True
            self._queued.clear()
            self.connection.reset(self, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()

    def client_reset(self) -> None:
        self.response_done = self.request_done = True
        self._queued.clear()
        if self.exchange is not None and not self.exchange.finished:
            self.exchange.abort()
        self.connection.forget(self)


class H2Connection(asyncio.Protocol):
    """One client's HTTP/2 connection and its streams."""

    active = None  # the sweeper's HTTP/1.1 notion; streams are checked in check_deadlines

    def __init__(self, gateway: Gateway, scheme: str) -> None:
        self.gateway = gateway
        self.loop = gateway.loop
        self.scheme = scheme
        server = gateway.runtime.config.server
        self.limits = server.limits
        self.timeouts = server.timeouts
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.client_cert: ClientCertificate | None = None  # verified at the handshake (mTLS), read once
        self.wait_deadline = _NEVER
        self._closing = False
        self._draining = False

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                self.client_cert = client_certificate(der)
        gateway = self.gateway
        if len(gateway.connections) >= self.limits.max_connections or gateway.draining:
            transport.abort()
            return
        gateway.connections.add(self)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_bytes,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        self.wait_deadline = self.loop.time() + self.timeouts.idle

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.gateway.connections.discard(self)
        self._abandon_streams()

    def _abandon_streams(self) -> None:
        """The connection is going: nothing more is sent on its streams, and their exchanges let go of their
        upstreams (the clients see the streams cut, never a whole-looking response)."""
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.response_done = stream.request_done = True
            if stream.exchange is not None and not stream.exchange.finished:
                stream.exchange.abort()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            # The library has queued a GOAWAY with the right code: send it and close.
            log.info("HTTP/2 protocol error from %s: %r", self.peer_ip, error)
            self.gateway.count_protocol_error(400)
            self.close()
            return
        for event in events:
            self._handle(event)
        self.flush()

    def pause_writing(self) -> None:
        for stream in self.streams.values():
            if stream.exchange is not None:
                stream.exchange.client_write_paused(True)

    def resume_writing(self) -> None:
        for stream in list(self.streams.values()):
            if stream.exchange is not None:
                stream.exchange.client_write_paused(False)

    # --- events -----------------------------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._start_stream(event.stream_id, event.headers,
                               event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.acknowledge(event.flow_controlled_length, event.stream_id)
            else:
                stream.request_data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.request_ended()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.client_reset()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.push()
            else:
                for stream in list(self.streams.values()):
                    stream.push()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for stream in list(self.streams.values()):
                stream.push()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _start_stream(self, stream_id: int, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        method = path = authority = host_field = None
        content_length: int | None = None
        lines: list[bytes] = []
        forwarding: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        grpc = False
        count = size = 0
        for name, value in fields:
            size += len(name) + len(value) + 4
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            count += 1
            if name == b"cookie":
                cookies.append(value)  # HTTP/2 may split it; HTTP/1.1 needs one field (RFC 9113 §8.2.3)
            elif name in FORWARDING_FIELDS:
                forwarding.append((name, value))
            elif name == b"host":
                host_field = value
            elif name == b"content-length":
                content_length = int(value)  # the library checked it is a number matching the DATA
            elif name not in _DROPPED:
                if name == b"content-type" and is_grpc(value):
                    grpc = True
                lines.append(name + b": " + value + b"\r\n")
        if self._draining:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)  # after our GOAWAY: safe to retry
            return
        stream = H2Stream(self, stream_id, grpc)
        self.streams[stream_id] = stream
        stream.request_done = ended
        self.wait_deadline = 0.0  # streams open: the sweeper looks at them every tick
        try:
            if count > self.limits.max_headers or size > self.limits.max_header_bytes:
                raise HeadersTooLarge()
            if method is None or path is None:
                raise BadRequest()
            self._begin(stream, method, path, authority or host_field, lines, cookies, forwarding,
                        content_length, ended)
        except HttpError as error:
            self.gateway.count_protocol_error(error.status)
            self._refuse(stream, error)

    def _begin(self, stream: H2Stream, raw_method: bytes, raw_target: bytes, authority: bytes | None,
               lines: list[bytes], cookies: list[bytes], forwarding: list[tuple[bytes, bytes]],
               content_length: int | None, ended: bool) -> None:
        method = _METHOD_NAMES.get(raw_method) or raw_method.decode("ascii")
        if method == "CONNECT":
            raise BadRequest("CONNECT is not supported.")
        if len(raw_target) > self.limits.max_uri_bytes:
            raise UriTooLong()
        if not raw_target.startswith(b"/") or b"#" in raw_target:
            raise BadRequest("The request target must be an absolute path.")
        if authority is None or not valid_host(authority):
            raise BadRequest("A request needs a valid :authority.")
        raw_path, _, query = raw_target.partition(b"?")
        path = normalize_path(raw_path)
        host = host_without_port(authority)
        if cookies:
            lines.append(b"cookie: " + b"; ".join(cookies) + b"\r\n")
        if self.client_cert is not None:
            lines.append(self.client_cert.header_line)
        runtime = self.gateway.runtime
        ctx = RequestContext(method, path, query, None, host, self.peer_ip, self.peer_ip, self.scheme, "2", lines)
        ctx.client_cert = self.client_cert
        trusted = forwarding if forwarding and runtime.is_trusted(self.peer_ip) else []
        if trusted:
            ctx.client_ip = client_address(self.peer_ip, trusted, runtime.is_trusted)
        add_forwarding_headers(ctx.headers, trusted, self.peer_ip, self.scheme, authority)
        # Without a length, a body of unknown size goes upstream chunked.
        framing = RequestFraming(content_length, not ended and content_length is None, authority, True, False,
                                 _NO_TOKENS)
        try:
            route = runtime.router.match(method, host, path, ctx.headers if runtime.routes_on_headers else ())
        except (NotFound, MethodNotAllowed) as error:
            exchange = H2Exchange(stream, runtime, ctx, framing, None, error)
        else:
            ctx.route = route
            if content_length is not None and content_length > route.max_body_bytes:
                raise PayloadTooLarge()
            exchange = H2Exchange(stream, runtime, ctx, framing, route, None)
        stream.exchange = exchange
        if not ended:
            stream.body_deadline = self.loop.time() + self.timeouts.read_body
        exchange.start()

    def _refuse(self, stream: H2Stream, error: HttpError) -> None:
        """A request that never became an exchange: answer it on its stream."""
        if stream.grpc:
            fields = [(b":status", b"200"), (b"content-type", b"application/grpc"), *grpc_error_trailers(error)]
            stream.send_headers(fields, end_stream=True)
            return
        body = error_body(error, new_request_id())
        stream.send_headers([(b":status", b"%d" % error.status), (b"content-type", b"application/json"),
                             (b"content-length", b"%d" % len(body)), *error.headers], end_stream=False)
        stream.send_data(body)
        stream.end_response()

    # --- used by the streams ------------------------------------------------------------------------

    def acknowledge(self, flow_controlled: int, stream_id: int) -> None:
        if flow_controlled and not self._closing:
            self.h2.acknowledge_received_data(flow_controlled, stream_id)  # a closed stream: the connection's only

    def reset(self, stream: H2Stream, code: h2.errors.ErrorCodes) -> None:
        stream.request_done = stream.response_done = True
        if not self._closing:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(stream.stream_id, code)
        self.forget(stream)

    def forget(self, stream: H2Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        if not self.streams and not self._closing:
            if self._draining:
                self.close()
            else:
                self.wait_deadline = self.loop.time() + self.timeouts.idle

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._abandon_streams()
            # After a protocol error the library has already queued its GOAWAY (with the error code), and
            # after the client's GOAWAY none is owed: one GOAWAY per connection, never a second saying "fine".
            if self.h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                self.h2.close_connection()
            self.flush()
            if self.transport is not None:
                self.transport.close()

    # --- deadlines and shutdown ----------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        if not self.streams:
            if self.wait_deadline <= now:
                self.close()  # idle: GOAWAY and close
            return
        for stream in list(self.streams.values()):
            exchange = stream.exchange
            if exchange is None:
                continue
            if stream.body_deadline <= now and not exchange.finished:
                stream.body_deadline = _NEVER
                exchange.fail(RequestTimeout("The request body was not received in time."))
            elif exchange.deadline <= now:
                exchange.check_deadline(now)
        self.flush()

    def drain(self) -> None:
        """Shutdown started: tell the client (GOAWAY) that no new streams will be served, finish the open
        ones, then close."""
        self._draining = True
        if not self.streams:
            self.close()
            return
        # Made by hand: the library's GOAWAY also closes its state machine, and the open streams still
        # have responses to send. Streams the client opens after this one are refused.
        self.flush()
        goaway = hyperframe.frame.GoAwayFrame(0)
        goaway.last_stream_id = max(self.streams)
        if self.transport is not None:
            self.transport.write(goaway.serialize())


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
