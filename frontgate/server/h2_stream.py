"""One HTTP/2 request stream as its `Exchange` sees it (see server/h2.py for the connection).

`H2Stream` stands in for the client connection an exchange talks to; `H2Exchange` writes the response as
HTTP/2 frames on it. A response waits for the client's flow-control window, and its upstream is paused
while too much of it waits.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import h2.errors
import h2.exceptions

from frontgate.errors import HttpError
from frontgate.protocol.grpc_status import grpc_error_trailers, grpc_status_for
from frontgate.protocol.http1 import HOP_BY_HOP, error_body, split_lines
from frontgate.server.exchange import Exchange, local_reply_head

if TYPE_CHECKING:
    from frontgate.server.h2 import H2Connection

# Response bytes waiting for the client's window; beyond this the stream's upstream stops being read.
SEND_HIGH_WATER = 64 * 1024
NEVER = float("inf")


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
        if self._held is not None:  # held whole for the route's response-body hooks
            self._hold_body(data)
            return
        if self._held_head is not None:
            self._send_held_head()
        self.bytes_out += len(data)
        self.last_upstream_activity = self.conn.loop.time()
        self.conn.send_data(data)

    def response_trailers(self, lines: list[bytes]) -> None:
        if self._held is not None:  # a held response carries them as header fields (see Exchange)
            self._held[1].extend(lines)
        elif not self.finished:
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
    body_deadline = NEVER  # the request body must keep coming (server.timeouts.read_body)

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
        self.body_deadline = NEVER
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
