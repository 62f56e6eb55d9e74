"""The downstream HTTP/2 connection (RFC 9113): ALPN `h2` on TLS listeners with `http2: true`, and cleartext
prior knowledge on listeners with `h2c: true`.

Frames, HPACK and the flow-control arithmetic come from the `h2` library. Every stream becomes the same
`Exchange` an HTTP/1.1 request does (same routing, plugins, limits, upstreams and accounting); only how the
response is written differs (`H2Exchange`), and each stream stands in for the connection the exchange
talks to (`H2Stream`). Back-pressure is per stream: a request body is acknowledged (WINDOW_UPDATE) only
once the exchange took it, and a response waits for the client's window while its upstream is paused.
Which protocol a connection speaks is settled in server/negotiate.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, cast

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
from frontgate.protocol.grpc_status import grpc_error_trailers, is_grpc
from frontgate.protocol.http1 import (
    HOP_BY_HOP,
    RequestFraming,
    error_body,
    host_without_port,
    valid_host,
)
from frontgate.routing.normalize import normalize_path
from frontgate.server.forwarding import FORWARDING_FIELDS, add_forwarding_headers, client_address
from frontgate.server.h2_stream import NEVER, H2Exchange, H2Stream
from frontgate.tls.client_cert import XFCC_HEADER, ClientCertificate, client_certificate

if TYPE_CHECKING:
    from frontgate.server.gateway import Gateway

log = logging.getLogger("frontgate.h2")

MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 256 * 1024  # what one stream's client may send ahead of us (request bodies)
CONNECTION_WINDOW = 1024 * 1024
# XFCC: only the gateway sets it, from the verified certificate.
_DROPPED = HOP_BY_HOP | {b"x-request-deadline", b"host", b"content-length", XFCC_HEADER}
_NO_TOKENS: frozenset[bytes] = frozenset()
_METHOD_NAMES = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class _ServerState(h2.connection.H2Connection):
    """The library's server state machine, refusing a stream beyond MAX_CONCURRENT_STREAMS with
    RST_STREAM(REFUSED_STREAM), as RFC 9113 §5.1.2 asks, instead of ending the whole connection.

    A client may open streams before our SETTINGS reach it (until then the limit is unlimited for it), and a
    refused stream is safe for it to retry. The header block is still decoded so HPACK stays in step. Relies
    on two library internals (h2 is pinned below 5; tests/integration/test_http2.py guards it)."""

    _admitting_refused = False

    @property
    def open_inbound_streams(self) -> int:
        return 0 if self._admitting_refused else super().open_inbound_streams

    def _receive_headers_frame(self, frame: Any) -> Any:
        if frame.stream_id in self.streams or super().open_inbound_streams < self.local_settings.max_concurrent_streams:
            return super()._receive_headers_frame(frame)
        self._admitting_refused = True
        try:
            frames, _ = super()._receive_headers_frame(frame)
        finally:
            self._admitting_refused = False
        self.reset_stream(frame.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        return frames, []  # no events: the gateway never sees the stream


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
        self.h2 = _ServerState(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, H2Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.client_cert: ClientCertificate | None = None  # verified at the handshake (mTLS), read once
        self.wait_deadline = NEVER
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
            route = runtime.match_route(ctx)
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
                stream.body_deadline = NEVER
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
