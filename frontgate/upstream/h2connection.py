"""One HTTP/2 client connection to an upstream target, multiplexing requests as streams (the `h2` library
does the framing, HPACK and the flow-control windows; this module does the I/O and the bookkeeping).

Each request gets an `H2Stream`, which the exchange drives exactly as it drives an HTTP/1.1
`UpstreamConnection` (the `UpstreamChannel` interface): the exchange needs to know nothing of HTTP/2.

Flow control, both ways:
- Response bodies: DATA is handed to the exchange as it arrives, and the stream's receive window is
  reopened only while the exchange reads (`pause_reading` stops acknowledging), so a slow client holds at
  most one stream window of that stream in memory. The connection window is reopened as data arrives,
  whatever the stream, so a paused stream never stalls its neighbours.
- Request bodies: sent as far as the peer's windows allow; the rest waits in the stream, and beyond
  `SEND_BUFFER_HIGH_WATER` the exchange is told to stop reading the client (`upstream_write_paused`),
  as it is when the socket's own write buffer fills.

GOAWAY: no new streams start on the connection; streams above its last stream id were never processed and
fail as "refused" (a connect-type failure, safe to retry for any method) when none of their body was handed
over yet; the others finish (the h2 library alone would end them all: see `_GracefulClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Set
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from frontgate.errors import HttpError
from frontgate.upstream.connection import ResponseReceiver, UpstreamProtocolError, UpstreamReset
from frontgate.upstream.errors import UpstreamConnectError
from frontgate.upstream.h2_head import Fields, request_fields, response_fields, trailer_lines

# Receive windows we announce. A stream's window bounds what one paused response holds in memory; 256 KiB
# keeps large gRPC messages moving without a round trip per 64 KiB (the protocol's default).
STREAM_WINDOW = 256 * 1024
# The connection window only has to stay out of the way of the stream windows.
CONNECTION_WINDOW = 16 * 1024 * 1024
# Request body bytes a stream holds while the peer's window is shut; beyond, the client is not read.
SEND_BUFFER_HIGH_WATER = 64 * 1024
# Streams started before the peer's SETTINGS say how many it takes, unless an earlier connection to the same
# target told (RFC 9113 §6.5.2 advises peers to allow at least 100).
STREAMS_BEFORE_SETTINGS = 100

_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None)
_NO_HOP_BY_HOP: frozenset[bytes] = frozenset()


class UpstreamStreamRefused(UpstreamConnectError):
    """The upstream refused the stream (REFUSED_STREAM, or a GOAWAY whose last stream id is below it): it
    processed nothing."""

    message = "The upstream service refused the request before processing it."


class _GracefulClient(h2.connection.H2Connection):
    """h2 closes the whole connection state on a GOAWAY (python-hyper/h2#1181), which would cut the
    streams the peer promised to finish. Here a GOAWAY is only reported; the connection owner stops
    opening streams and closes the connection when the last one ends. (An h2 internal, overridden: h2 is
    pinned below 5, and tests/integration/test_grpc_upstream.py's graceful-shutdown test guards it.)"""

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Stream:
    """One request on an `H2UpstreamConnection`, as the exchange sees an upstream connection."""

    __slots__ = (
        "_body_taken",
        "_end_pending",
        "_head_only",
        "_local_closed",
        "_pending",
        "_pending_bytes",
        "_reading_paused",
        "_receiver",
        "_remote_closed",
        "_reported_write_paused",
        "_unacked",
        "closed",
        "connection",
        "has_date",
        "response_started",
        "stream_id",
        "uses",
    )

    named_hop_by_hop: Set[bytes] = _NO_HOP_BY_HOP  # HTTP/2 has no Connection header

    def __init__(self, connection: H2UpstreamConnection) -> None:
        self.connection = connection
        self.stream_id = 0  # allocated when the request starts: ids must rise in the order streams open
        self.uses = 0
        self.closed = False
        self.has_date = False
        self.response_started = False
        self._receiver: ResponseReceiver | None = None
        self._head_only = False
        self._local_closed = False  # our side ended (END_STREAM sent) or reset
        self._remote_closed = False  # the peer's side ended (END_STREAM received) or reset
        self._end_pending = False  # end_body came while body bytes were still waiting for window
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._body_taken = 0  # request body bytes handed to this stream
        self._reading_paused = False
        self._unacked = 0  # response bytes consumed but not yet given back to the peer's send window
        self._reported_write_paused = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self._receiver else "new")
        return f"<H2Stream {self.stream_id} {state}>"

    # --- used by the exchange ---------------------------------------------------------------------

    def start(self, receiver: ResponseReceiver, head: bytes, head_only: bool, chunked_body: bool) -> None:
        conn = self.connection
        self._receiver = receiver
        self._head_only = head_only
        if conn.closed or conn.going_away:
            conn.fail_soon(self, UpstreamStreamRefused())
            return
        request = request_fields(head, conn.scheme, conn.grpc, chunked_body)
        h2conn = conn.h2
        try:
            self.stream_id = h2conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            conn.going_away = True  # ids exhausted: this connection takes no more streams
            conn.fail_soon(self, UpstreamStreamRefused())
            return
        conn.streams[self.stream_id] = self
        conn.streams_started += 1
        self.uses = conn.streams_started
        try:
            h2conn.send_headers(self.stream_id, request.fields, end_stream=not request.has_body)
        except h2.exceptions.ProtocolError:
            # A field HTTP/2 cannot carry (h2 validates what goes out): nothing was sent.
            conn.streams.pop(self.stream_id, None)
            self.stream_id = 0
            conn.fail_soon(self, UpstreamProtocolError("The request cannot be sent to the upstream over HTTP/2."))
            return
        self._local_closed = not request.has_body
        conn.send_frames()

    def write(self, data: bytes) -> None:
        """Request body bytes (raw: HTTP/2 frames them)."""
        if self._local_closed or self.closed or not data or not self.stream_id:
            return  # (no stream id: the start failed, and that failure is on its way to the exchange)
        self._body_taken += len(data)
        if self._pending:
            self._pending.append(data)
            self._pending_bytes += len(data)
        else:
            self._send_body(data)
        self.connection.send_frames()
        self._update_write_paused()

    def end_body(self) -> None:
        if self._local_closed or self.closed or not self.stream_id:
            return
        if self._pending:
            self._end_pending = True
            return
        self._end_stream()
        self.connection.send_frames()

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._unacked and not self.closed:
            self._give_back_window(0)
            self.connection.send_frames()

    def detach(self) -> None:
        """The exchange no longer listens (client gone, timeout, retry): the stream is cancelled."""
        self._receiver = None
        self.close()

    def close(self) -> None:
        """End this stream (cancelling it if it is still open); the connection carries on."""
        if self.closed:
            return
        conn = self.connection
        if self.stream_id and not (self._local_closed and self._remote_closed):
            conn.reset(self.stream_id)
        self._forget()
        conn.send_frames()

    # --- from the connection ----------------------------------------------------------------------

    def headers_received(self, fields: Fields, ends_stream: bool) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        response = response_fields(fields)
        self.response_started = True
        self.has_date = response.has_date
        if response.grpc_status is not None:
            receiver.grpc_status = response.grpc_status  # a trailers-only response: the status is here
        content_length = response.content_length
        if ends_stream and content_length is None:
            content_length = 0  # nothing follows the head (a gRPC trailers-only response, for one)
        receiver.response_head(response.status, response.lines, False, content_length)

    @property
    def receiver(self) -> ResponseReceiver | None:
        return self._receiver

    def data_received(self, data: bytes, flow_controlled_length: int) -> None:
        receiver = self._receiver
        if receiver is not None and data and not self._head_only:
            receiver.response_body(data)
        self._unacked += flow_controlled_length
        if not self._reading_paused:
            self._give_back_window(STREAM_WINDOW // 4)

    def trailers_received(self, fields: Fields) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        lines, grpc_status = trailer_lines(fields)
        if grpc_status is not None:
            receiver.grpc_status = grpc_status
        receiver.response_trailers(lines)

    def ended(self) -> None:
        """The response is complete (END_STREAM from the peer)."""
        self._remote_closed = True
        receiver = self._receiver
        if receiver is None:
            self.close()
            return
        if not self.response_started:
            self._fail(UpstreamProtocolError())  # a stream ended without a response head
            return
        self._receiver = None
        self._unpause(receiver)
        if self._local_closed:
            self._forget()  # closed both ways: nothing to reset
        # With our side still open the pool's `release` cancels it: the response needs no more of the body.
        receiver.response_complete(True)

    def reset_by_peer(self, error_code: int, remote: bool) -> None:
        if not remote:
            error: HttpError = UpstreamProtocolError()  # h2 reset it: the peer broke the protocol on it
        elif error_code == h2.errors.ErrorCodes.REFUSED_STREAM and self.refusable():
            error = UpstreamStreamRefused()
        else:
            error = UpstreamReset()
        self._local_closed = self._remote_closed = True  # the stream is gone both ways
        self._fail(error)

    def refusable(self) -> bool:
        """Can a refusal be reported as a connect-type failure? Only while the exchange still holds all of
        the request (no body handed over, no response seen)."""
        return self._body_taken == 0 and not self.response_started

    def connection_failed(self, error: HttpError) -> None:
        self._local_closed = self._remote_closed = True  # nothing more goes either way on it
        self._fail(error)

    def window_opened(self) -> None:
        """The peer's windows grew: send what waits."""
        if not self._pending or self.closed:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._send_body(data)
        if not self._pending and self._end_pending:
            self._end_stream()
        self._update_write_paused()

    def update_write_paused(self) -> None:
        self._update_write_paused()

    def fail_now(self, error: HttpError) -> None:
        self._fail(error)

    # --- internals --------------------------------------------------------------------------------

    def _send_body(self, data: bytes) -> None:
        h2conn = self.connection.h2
        stream_id = self.stream_id
        try:
            window = h2conn.local_flow_control_window(stream_id)
            frame_size = h2conn.max_outbound_frame_size
            sent = 0
            while sent < len(data) and window > 0:
                size = min(window, frame_size, len(data) - sent)
                h2conn.send_data(stream_id, data[sent:sent + size])
                sent += size
                window -= size
        except h2.exceptions.StreamClosedError:
            self._local_closed = True  # the peer reset it; its StreamReset event reports that
            return
        if sent < len(data):
            rest = data[sent:]
            self._pending.append(rest)
            self._pending_bytes += len(rest)

    def _end_stream(self) -> None:
        self._end_pending = False
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the peer reset it meanwhile
            self.connection.h2.end_stream(self.stream_id)
        self._local_closed = True
        if self._receiver is None and self._remote_closed:
            self._forget()  # the response completed first; now both sides are done

    def _update_write_paused(self) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        paused = self._pending_bytes > SEND_BUFFER_HIGH_WATER or (
            self.connection.write_paused and not self._local_closed)
        if paused != self._reported_write_paused:
            self._reported_write_paused = paused
            receiver.upstream_write_paused(paused)

    def _give_back_window(self, threshold: int) -> None:
        """Reopen the peer's send window on this stream for bytes consumed, in updates of at least
        `threshold` bytes (one WINDOW_UPDATE per quarter window, not one per DATA frame)."""
        if self._unacked > threshold and not self._remote_closed:
            self.connection.open_stream_window(self.stream_id, self._unacked)
            self._unacked = 0

    def _fail(self, error: HttpError) -> None:
        receiver = self._receiver
        self._receiver = None
        started = self.response_started
        if receiver is not None:
            self._unpause(receiver)
        self.close()
        if receiver is not None:
            receiver.upstream_failed(error, started)

    def _unpause(self, receiver: ResponseReceiver) -> None:
        """Leaving the exchange: never leave its client paused on our account."""
        if self._reported_write_paused:
            self._reported_write_paused = False
            receiver.upstream_write_paused(False)

    def _forget(self) -> None:
        if not self.closed:
            self.closed = True
            self._pending.clear()
            self._pending_bytes = 0
            self.connection.stream_closed(self)


class H2UpstreamConnection(asyncio.Protocol):
    """The socket and the h2 state machine of one HTTP/2 connection; streams are handed out by the pool
    (frontgate/upstream/h2pool.py) while `has_room()`."""

    def __init__(self, scheme: bytes, grpc: bool, on_closed: Callable[[H2UpstreamConnection], None],
                 stream_limit: int = STREAMS_BEFORE_SETTINGS) -> None:
        self.scheme = scheme  # :scheme of every request (http for h2c, https over TLS)
        self.grpc = grpc
        self._on_closed = on_closed
        self.h2 = _GracefulClient(config=_CONFIG)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.h2.DEFAULT_MAX_HEADER_LIST_SIZE,
        })
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}  # started streams not yet closed, by id
        self.handed_out = 0  # streams handed out and not closed (started or about to start)
        self.streams_started = 0
        self.closed = False
        self.going_away = False  # GOAWAY received (or ids ran out): no new streams
        self.write_paused = False  # the socket's write buffer is full
        self.idle_since = time.monotonic()
        self.settings_received = False
        self._stream_limit_before_settings = stream_limit
        self._last_processed = 2**31 - 1  # from GOAWAY: streams above it were never processed
        self._connection_unacked = 0
        self._touched: dict[int, ResponseReceiver] = {}

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("going away" if self.going_away else "open")
        return f"<H2UpstreamConnection {state} streams={self.handed_out} started={self.streams_started}>"

    # --- for the pool -----------------------------------------------------------------------------

    def has_room(self) -> bool:
        if self.closed or self.going_away:
            return False
        return self.handed_out < self.stream_limit

    @property
    def stream_limit(self) -> int:
        """Streams the peer takes at once (its SETTINGS_MAX_CONCURRENT_STREAMS, once known)."""
        if self.settings_received:
            return self.h2.remote_settings.max_concurrent_streams
        return self._stream_limit_before_settings

    def open_stream(self) -> H2Stream:
        self.handed_out += 1
        return H2Stream(self)

    def close_gracefully(self) -> None:
        """GOAWAY, then close: for an idle connection the pool lets go of."""
        if self.closed:
            return
        self.going_away = True
        if self.transport is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
                self.send_frames()
        self._shut()

    def _shut(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # what is buffered (a GOAWAY, a last RST_STREAM) still goes out
        else:
            self._lost()

    # --- for streams ------------------------------------------------------------------------------

    def send_frames(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def reset(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed or reset
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    def open_stream_window(self, stream_id: int, size: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the peer reset it meanwhile
            self.h2.increment_flow_control_window(size, stream_id)

    def stream_closed(self, stream: H2Stream) -> None:
        self.handed_out -= 1
        if stream.stream_id:
            self.streams.pop(stream.stream_id, None)
        if self.handed_out == 0:
            self.idle_since = time.monotonic()
            if self.going_away:
                self.close_gracefully()

    def fail_soon(self, stream: H2Stream, error: HttpError) -> None:
        """Report a failure from the next loop turn, never from inside the exchange's own call."""
        asyncio.get_running_loop().call_soon(stream.fail_now, error)

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        self.send_frames()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.send_frames()  # h2 queued a GOAWAY saying why
            self._broken(UpstreamProtocolError())
            return
        touched = self._touched
        streams = self.streams
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is None:
                continue  # pings and settings acks (h2 answers them), priorities, unknown frames
            stream_id = getattr(event, "stream_id", 0)
            stream = streams.get(stream_id) if stream_id else None
            if stream is not None and stream.receiver is not None:
                touched[stream_id] = stream.receiver
            handler(self, event, stream)
        self.send_frames()
        if touched:
            for receiver in touched.values():
                receiver.flush()  # what this packet produced goes to each client in one write
            touched.clear()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream.update_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.update_write_paused()

    # --- events -----------------------------------------------------------------------------------

    def _on_response(self, event: h2.events.ResponseReceived, stream: H2Stream | None) -> None:
        if stream is not None:
            stream.headers_received(event.headers, event.stream_ended is not None)

    def _on_data(self, event: h2.events.DataReceived, stream: H2Stream | None) -> None:
        size = event.flow_controlled_length
        self._connection_unacked += size
        if self._connection_unacked > CONNECTION_WINDOW // 4:
            self.h2.increment_flow_control_window(self._connection_unacked)
            self._connection_unacked = 0
        if stream is not None:
            stream.data_received(event.data, size)

    def _on_trailers(self, event: h2.events.TrailersReceived, stream: H2Stream | None) -> None:
        if stream is not None:
            stream.trailers_received(event.headers)

    def _on_stream_ended(self, event: h2.events.StreamEnded, stream: H2Stream | None) -> None:
        if stream is not None:
            stream.ended()

    def _on_stream_reset(self, event: h2.events.StreamReset, stream: H2Stream | None) -> None:
        if stream is not None:
            stream.reset_by_peer(int(event.error_code), event.remote_reset)

    def _on_window_updated(self, event: h2.events.WindowUpdated, stream: H2Stream | None) -> None:
        if event.stream_id == 0:
            for each in list(self.streams.values()):
                each.window_opened()
        elif stream is not None:
            stream.window_opened()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged, stream: H2Stream | None) -> None:
        self.settings_received = True
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for each in list(self.streams.values()):
                each.window_opened()

    def _on_goaway(self, event: h2.events.ConnectionTerminated, stream: H2Stream | None) -> None:
        self.going_away = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        self._last_processed = min(self._last_processed, last)
        for stream_id, each in list(self.streams.items()):
            if stream_id > last:
                each.connection_failed(UpstreamStreamRefused() if each.refusable() else UpstreamReset())
        if event.error_code != h2.errors.ErrorCodes.NO_ERROR or self.handed_out == 0:
            self._shut()  # an error ends the connection; streams left fail in connection_lost

    # --- endings ----------------------------------------------------------------------------------

    def _broken(self, error: HttpError) -> None:
        for stream in list(self.streams.values()):
            stream.connection_failed(error)
        if self.transport is not None:
            self.transport.abort()
        self._lost()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.going_away = True
        for stream_id, stream in list(self.streams.items()):
            unprocessed = stream_id > self._last_processed and stream.refusable()
            stream.connection_failed(UpstreamStreamRefused() if unprocessed else UpstreamReset())
        self._on_closed(self)


_HANDLERS: dict[type[h2.events.Event], Callable[[H2UpstreamConnection, Any, H2Stream | None], None]] = {
    h2.events.ResponseReceived: H2UpstreamConnection._on_response,
    h2.events.DataReceived: H2UpstreamConnection._on_data,
    h2.events.TrailersReceived: H2UpstreamConnection._on_trailers,
    h2.events.StreamEnded: H2UpstreamConnection._on_stream_ended,
    h2.events.StreamReset: H2UpstreamConnection._on_stream_reset,
    h2.events.WindowUpdated: H2UpstreamConnection._on_window_updated,
    h2.events.RemoteSettingsChanged: H2UpstreamConnection._on_settings,
    h2.events.ConnectionTerminated: H2UpstreamConnection._on_goaway,
}
