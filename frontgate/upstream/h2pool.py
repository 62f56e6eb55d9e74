"""The pool of an HTTP/2 target: few connections, many streams.

`take_idle` hands out a new stream on a live connection with room under the peer's
MAX_CONCURRENT_STREAMS; when none has room, the exchange calls `connect`, and requests that arrive while a
connection is being opened wait for it rather than each opening their own. `release` ends the stream; a
connection that has carried its last stream stays for `pool.idle_timeout`.
"""

from __future__ import annotations

import asyncio
import logging

from frontgate.upstream.connection import UpstreamChannel
from frontgate.upstream.errors import UpstreamConnectError
from frontgate.upstream.h2connection import STREAMS_BEFORE_SETTINGS, H2Stream, H2UpstreamConnection
from frontgate.upstream.pool import PoolKey, open_connection

log = logging.getLogger("frontgate.upstream")

# Connections a request may wait for when others take the streams of each first (a peer allowing very few
# streams per connection, a burst of requests): beyond, it fails as a connect error.
_OPENS_PER_REQUEST = 4


class UpstreamNotHttp2(UpstreamConnectError):
    message = "The upstream service does not speak HTTP/2."


class H2TargetPool:
    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.label = f"{key.host}:{key.port}"  # "<upstream> target <url>" once a cluster uses it (for logs)
        self.in_flight = 0
        self.connects = 0
        self.closed = False
        self._connections: list[H2UpstreamConnection] = []
        self._opening: asyncio.Task[H2UpstreamConnection] | None = None
        self._scheme = b"https" if key.tls is not None else b"http"

    def __repr__(self) -> str:
        k = self.key
        streams = sum(c.handed_out for c in self._connections)
        return (f"<H2TargetPool {k.host}:{k.port} connections={len(self._connections)} streams={streams} "
                f"in_flight={self.in_flight} connects={self.connects}>")

    @property
    def idle_count(self) -> int:
        """Connections carrying no stream."""
        return sum(1 for c in self._connections if c.handed_out == 0 and not c.closed)

    def take_idle(self) -> H2Stream | None:
        for conn in self._connections:
            if conn.has_room():
                return conn.open_stream()
        return None

    async def connect(self) -> H2Stream:
        for _ in range(_OPENS_PER_REQUEST):
            opening = self._opening
            if opening is None:
                opening = self._opening = asyncio.get_running_loop().create_task(self._open())
                opening.add_done_callback(self._opened)
            # Shielded: a request that gives up waiting does not abort a connection others wait for.
            conn = await asyncio.shield(opening)
            if conn.has_room():
                return conn.open_stream()
            if conn.closed:
                break  # closed as soon as it opened: the target is not taking connections
            stream = self.take_idle()  # it filled up with the requests that waited with this one
            if stream is not None:
                return stream
        raise UpstreamConnectError()

    async def _open(self) -> H2UpstreamConnection:
        key = self.key
        self.connects += 1
        limit = self._known_stream_limit()
        transport, conn = await open_connection(
            lambda: H2UpstreamConnection(self._scheme, key.grpc, self._forget, limit), key, self.label)
        if key.tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                transport.abort()
                log.error("upstream %s: the target did not choose h2 in the TLS handshake (ALPN)", self.label)
                raise UpstreamNotHttp2()
        self._connections.append(conn)
        return conn

    def _known_stream_limit(self) -> int:
        """What the target's SETTINGS said last time: a new connection does not take more than that before its
        own SETTINGS arrive (a burst beyond would be refused)."""
        for conn in reversed(self._connections):
            if conn.settings_received:
                return conn.stream_limit
        return STREAMS_BEFORE_SETTINGS

    def _opened(self, task: asyncio.Task[H2UpstreamConnection]) -> None:
        self._opening = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone

    def put_back(self, channel: UpstreamChannel) -> None:
        """A stream taken and not started: it ends here, and its connection counts one stream fewer."""
        self.release(channel, True)

    def release(self, channel: UpstreamChannel, reusable: bool) -> None:
        """The exchange is done with the stream; `reusable` does not matter: the stream ends either way
        (cancelled if it is still open) and the connection carries on."""
        channel.close()
        if isinstance(channel, H2Stream):
            conn = channel.connection
            if conn.handed_out == 0 and not conn.closed and (self.closed or self.idle_count > self.key.max_idle):
                conn.close_gracefully()

    def expire_idle(self, now: float) -> None:
        cutoff = now - self.key.idle_timeout
        for conn in list(self._connections):
            if conn.handed_out == 0 and conn.idle_since < cutoff:
                conn.close_gracefully()

    def close(self) -> None:
        """Idle connections close now; busy ones after their last stream (see `release`)."""
        self.closed = True
        for conn in list(self._connections):
            if conn.handed_out == 0:
                conn.close_gracefully()

    def _forget(self, conn: H2UpstreamConnection) -> None:
        if conn in self._connections:
            self._connections.remove(conn)
