"""A WebSocket opening handshake through the gateway (docs/websocket.md).

It is an `Exchange` like any request: routed, checked by the route's plugins (which may refuse it with their
usual 4xx), timed by the route's `timeout`. What differs is how it meets the upstream: always on a fresh
connection (a pooled one may be half-closed by the upstream, and this one is never pooled after), with the
Upgrade and Connection fields put back, and retried only when the connection could not be made, since once
the handshake went out the upstream may have acted on it. A 101 turns both sockets into a `Tunnel`; any
other answer is relayed as a plain response, and the connection closes after it (whatever the client sent
after its handshake was meant for the WebSocket).
"""

from __future__ import annotations

import asyncio
from collections.abc import Set
from typing import TYPE_CHECKING

from frontgate.config.compile import CompiledRoute
from frontgate.pipeline.context import ResponseHead
from frontgate.server.exchange import Exchange
from frontgate.server.tunnel import Tunnel
from frontgate.upstream.cluster import Target
from frontgate.upstream.connection import UpstreamChannel, UpstreamConnection
from frontgate.upstream.retry import Failure

if TYPE_CHECKING:
    from frontgate.server.connection import HttpConnection

# Hop-by-hop, so dropped from the client's request and the upstream's 101; the gateway writes its own.
UPGRADE_FIELDS = b"connection: upgrade\r\nupgrade: websocket\r\n"
_SWITCHING_PROTOCOLS = b"HTTP/1.1 101 Switching Protocols\r\n"
_PLAIN_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})


class WebSocketHandshake(Exchange):
    conn: HttpConnection  # handshakes are HTTP/1.1 only

    def start(self) -> None:
        self.keep_alive = False  # no HTTP after a handshake: either a tunnel or a close
        super().start()

    def _can_retry(self, failure: Failure) -> bool:
        return failure is Failure.CONNECT and super()._can_retry(failure)

    def _send(self, upstream: UpstreamChannel) -> None:
        target = self.target
        if upstream.uses and target is not None:  # a pooled connection: leave it and make a new one
            target.pool.put_back(upstream)
            self._task = self.conn.loop.create_task(self._connect_and_send(target))
            return
        # Only HTTP/1.1 upstreams take handshakes: routes to HTTP/2 ones have `websocket` off (compile.py).
        assert isinstance(upstream, UpstreamConnection)
        upstream.accept_protocol_switch(self)
        super()._send(upstream)

    def _upstream_head(self, target: Target) -> bytes:
        head = super()._upstream_head(target)
        return head[:-2] + UPGRADE_FIELDS + b"\r\n"  # before the blank line that ends the head

    def response_complete(self, reusable: bool) -> None:
        super().response_complete(False)  # the upstream refused the upgrade; its connection is not pooled

    def upstream_switched(self, lines: list[bytes], transport: asyncio.Transport, early: bytes) -> None:
        """The upstream said 101: relay the head, then the bytes both ways."""
        route = self.route
        assert route is not None and route.websocket is not None
        upstream = self.upstream
        named = upstream.named_hop_by_hop - _PLAIN_CONNECTION_TOKENS if upstream is not None else None
        self.upstream = None
        self.status = 101
        self.response_started = True
        self._end_try(ok=True)  # a tunnel is not a request in flight: it holds no breaker capacity
        self.finished = True
        self._end()
        conn = self.conn
        conn.write(self._switching_head(route, lines, named))
        handed = conn.hand_over(self)
        if handed is None:  # the client left while the upstream answered
            transport.close()
            conn.gateway.observe(self)
            return
        client, client_early = handed
        Tunnel(conn.gateway, self, client, transport, route.websocket).start(client_early, early)

    def _switching_head(self, route: CompiledRoute, lines: list[bytes], named: Set[bytes] | None) -> bytes:
        if named:  # fields the 101's Connection header names are hop-by-hop too
            lines = [line for line in lines if line[: line.index(b":")] not in named]
        if route.response_hooks:  # request id echo, CORS, ...; the status stays 101
            head = ResponseHead(101, lines=lines)
            for hook in route.response_hooks:
                hook(self.ctx, head)
            lines = head.lines()
        added = self.ctx.response_lines_add
        if added:
            lines = lines + added
        return b"".join([_SWITCHING_PROTOCOLS, *lines, UPGRADE_FIELDS, b"\r\n"])
