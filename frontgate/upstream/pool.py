"""Keep-alive connection pools, one per upstream target. Pools outlive config generations: a reload that
keeps a target keeps its warm connections."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from frontgate.upstream.connection import UpstreamChannel, UpstreamConnection
from frontgate.upstream.errors import UpstreamConnectError, UpstreamConnectTimeout
from frontgate.upstream.tls import handshake_failure

log = logging.getLogger("frontgate.upstream")


@dataclass(frozen=True, slots=True)
class PoolKey:
    host: str
    port: int
    tls: ssl.SSLContext | None
    server_hostname: str | None
    max_idle: int
    idle_timeout: float
    connect_timeout: float
    http2: bool = False  # HTTP/2 (h2c prior knowledge, or ALPN h2 over TLS): frontgate/upstream/h2pool.py
    grpc: bool = False  # an HTTP/2 upstream declared `protocol: grpc`: the deadline goes as grpc-timeout


P = TypeVar("P", bound=asyncio.Protocol)


async def open_connection(factory: Callable[[], P], key: PoolKey, label: str) -> tuple[asyncio.Transport, P]:
    """A new connection to the target of `key` (TLS when it says so), within its connect timeout; failures
    become the gateway's 502/504 errors."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(key.connect_timeout):
            transport, conn = await loop.create_connection(
                factory, key.host, key.port, ssl=key.tls,
                server_hostname=key.server_hostname if key.tls else None,
            )
    except TimeoutError as exc:
        raise UpstreamConnectTimeout() from exc
    except ssl.SSLError as exc:
        # The client gets a plain 502; the operator needs to know which upstream and why.
        log.error("upstream %s: %s", label, handshake_failure(exc))
        raise UpstreamConnectError() from exc
    except OSError as exc:
        raise UpstreamConnectError() from exc
    return transport, conn


class UpstreamPool(Protocol):
    """What the exchange, the balancers and the status pages use of a target's pool."""

    key: PoolKey
    label: str  # for logs: "<upstream> target <url>" once a cluster uses it
    in_flight: int  # requests the exchanges have in flight to this target
    connects: int
    closed: bool

    @property
    def idle_count(self) -> int: ...
    def take_idle(self) -> UpstreamChannel | None:
        """A channel ready for a request at once, or None: then `connect`."""
    async def connect(self) -> UpstreamChannel: ...
    def put_back(self, channel: UpstreamChannel) -> None:
        """Undo `take_idle`: the channel was not used."""
    def release(self, channel: UpstreamChannel, reusable: bool) -> None: ...
    def expire_idle(self, now: float) -> None: ...
    def close(self) -> None: ...


class TargetPool:
    """Idle connections to one target, most recently used first (warm sockets, and the rest age out)."""

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.label = f"{key.host}:{key.port}"  # "<upstream> <target url>" once a cluster uses it (for logs)
        self._idle: list[UpstreamConnection] = []
        self.in_flight = 0
        self.connects = 0
        self.closed = False

    def __repr__(self) -> str:
        k = self.key
        return (f"<TargetPool {k.host}:{k.port} idle={len(self._idle)} in_flight={self.in_flight} "
                f"connects={self.connects}>")

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used live idle connection, or None (then `connect`)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    def put_back(self, channel: UpstreamChannel) -> None:
        """Undo `take_idle` for a request that needs a fresh connection: the pool is left as it was (the same
        place, the same idle age)."""
        if self.closed:
            channel.close()
        else:
            self._idle.append(cast(UpstreamConnection, channel))  # the only kind this pool hands out

    async def connect(self) -> UpstreamConnection:
        self.connects += 1
        _, conn = await open_connection(UpstreamConnection, self.key, self.label)
        return conn

    def release(self, channel: UpstreamChannel, reusable: bool) -> None:
        if not reusable or channel.closed or self.closed or len(self._idle) >= self.key.max_idle:
            channel.close()
            return
        conn = cast(UpstreamConnection, channel)  # the only kind this pool hands out
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def expire_idle(self, now: float) -> None:
        """Close connections idle longer than `idle_timeout`: the oldest sit at the front of the list."""
        idle = self._idle
        cutoff = now - self.key.idle_timeout
        expired = 0
        while expired < len(idle) and (idle[expired].closed or idle[expired].idle_since < cutoff):
            idle[expired].close()
            expired += 1
        if expired:
            del idle[:expired]

    def close(self) -> None:
        self.closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
