"""A WebSocket connection after its 101: bytes relayed both ways between the client's socket and the
upstream's, until either side closes, which closes the other.

Nothing is buffered beyond the sockets' own write buffers: when one side's buffer fills, the other side is
no longer read until it drains. With a route's `websocket.max_message_bytes`, each direction's frame
headers are followed on the fly (frontgate/protocol/websocket.py, payloads are never unmasked): a message
over the limit, or a frame that cannot be followed, ends the tunnel with a Close frame (1009 or 1002) to
each side whose stream is at a frame boundary, then the sockets are closed.

Tunnels are registered on the gateway (a gauge, drain) and swept once a second for their idle timeout: no
timer per socket, and no clock read per packet (the sweep sees whether the byte counts moved). A tunnel
ends in the access log as its handshake request: status 101, bytes each way, duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from frontgate.config.schema import WebSocket
from frontgate.protocol.websocket import FrameTracker, close_frame

if TYPE_CHECKING:
    from frontgate.server.exchange import Exchange
    from frontgate.server.gateway import Gateway

# After a tunnel ends, its sockets get this long to flush what was queued for them before they are aborted
# (a peer that stops reading must not hold a socket forever).
CLOSE_GRACE = 5.0


class Tunnel:
    def __init__(
        self,
        gateway: Gateway,
        exchange: Exchange,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        config: WebSocket,
    ) -> None:
        self.gateway = gateway
        self.exchange = exchange  # the handshake: it is observed (logged, counted) when the tunnel ends
        self.client = client
        self.upstream = upstream
        self.idle_timeout = config.idle_timeout
        limit = config.max_message_bytes
        self._client_frames = FrameTracker(limit) if limit is not None else None
        self._upstream_frames = FrameTracker(limit) if limit is not None else None
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self.ended = False
        self._ended_at = 0.0
        self._open_sockets = 2
        self._client_full = False  # the client's write buffer is over its high-water mark
        self._upstream_full = False
        self._bytes_seen = 0  # by the last sweep
        self._quiet_since = gateway.loop.time()

    def start(self, client_early: bytes, upstream_early: bytes) -> None:
        """Take both sockets over; `*_early` are the bytes each side sent before the switch was made."""
        client, upstream = self.client, self.upstream
        self.gateway.tunnels.add(self)
        client.set_protocol(_Side(self, self.from_client, self.client_full))
        upstream.set_protocol(_Side(self, self.from_upstream, self.upstream_full))
        if upstream_early:
            self.from_upstream(upstream_early)
        if client_early and not self.ended:
            self.from_client(client_early)
        if not self.ended:
            # Reading may still be paused from the HTTP exchange (the client's was, until the 101 came).
            if not self._client_full and not upstream.is_reading():
                upstream.resume_reading()
            if not self._upstream_full and not client.is_reading():
                client.resume_reading()

    def __repr__(self) -> str:
        state = "ended" if self.ended else "open"
        return f"<Tunnel {state} in={self.bytes_from_client} out={self.bytes_from_upstream}>"

    # --- relaying ---------------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self.ended:
            return
        self.bytes_from_client += len(data)
        frames = self._client_frames
        if frames is not None:
            data = frames.feed(data)
            if frames.violation:
                self.upstream.write(data)
                self._refuse(frames.violation)
                return
        self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        if self.ended:
            return
        self.bytes_from_upstream += len(data)
        frames = self._upstream_frames
        if frames is not None:
            data = frames.feed(data)
            if frames.violation:
                self.client.write(data)
                self._refuse(frames.violation)
                return
        self.client.write(data)

    def _refuse(self, code: int) -> None:
        """A message too big (1009) or a frame that cannot be followed (1002): say so to each side whose
        stream is at a frame boundary (the offending side's always is: its frame was not relayed), then end."""
        to_client, to_upstream = self._upstream_frames, self._client_frames
        if to_client is not None and to_client.at_frame_boundary:
            self.client.write(close_frame(code, masked=False))
        if to_upstream is not None and to_upstream.at_frame_boundary:
            self.upstream.write(close_frame(code, masked=True))  # as the client would: masked (RFC 6455 §5.3)
        self.end()

    # --- flow control: a full write buffer on one side stops reading the other --------------------

    def client_full(self, full: bool) -> None:
        self._client_full = full
        self._set_reading(self.upstream, not full)

    def upstream_full(self, full: bool) -> None:
        self._upstream_full = full
        self._set_reading(self.client, not full)

    def _set_reading(self, transport: asyncio.Transport, reading: bool) -> None:
        if self.ended or transport.is_closing():
            return
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    # --- endings ----------------------------------------------------------------------------------

    def end(self) -> None:
        """Close both sides (each after flushing what is queued for it) and account for the tunnel once."""
        if self.ended:
            return
        self.ended = True
        self._ended_at = self.gateway.loop.time()
        self.client.close()
        self.upstream.close()
        exchange = self.exchange
        exchange.body_bytes = self.bytes_from_client
        exchange.bytes_out = self.bytes_from_upstream
        self.gateway.observe(exchange)

    def socket_closed(self) -> None:
        self.end()
        self._open_sockets -= 1
        if self._open_sockets == 0:
            self.gateway.tunnels.discard(self)

    def check(self, now: float) -> None:
        """Called by the gateway's sweeper about once a second: the idle timeout, and sockets that would not
        finish closing."""
        if self.ended:
            if now - self._ended_at >= CLOSE_GRACE:
                self.client.abort()
                self.upstream.abort()
                self.gateway.tunnels.discard(self)
            return
        moved = self.bytes_from_client + self.bytes_from_upstream
        if moved != self._bytes_seen:
            self._bytes_seen = moved
            self._quiet_since = now
        elif now - self._quiet_since >= self.idle_timeout:
            self.end()


class _Side(asyncio.Protocol):
    """One socket of the tunnel (the client's or the upstream's), once it speaks WebSocket: its events go to
    the tunnel's handlers for that side."""

    def __init__(self, tunnel: Tunnel, received: Callable[[bytes], None], full: Callable[[bool], None]) -> None:
        self.tunnel = tunnel
        self._received = received
        self._full = full

    def data_received(self, data: bytes) -> None:
        self._received(data)

    def eof_received(self) -> bool | None:
        self.tunnel.end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.socket_closed()

    def pause_writing(self) -> None:
        self._full(True)

    def resume_writing(self) -> None:
        self._full(False)
