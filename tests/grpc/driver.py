"""Drives frontgate's HTTP/2 upstream side the way the exchange does (a rendered HTTP/1.1 head, raw body
bytes, `ResponseReceiver` events), so its behaviour against real servers is tested without a client side."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from frontgate.errors import HttpError
from frontgate.upstream.connection import UpstreamChannel
from frontgate.upstream.h2pool import H2TargetPool
from frontgate.upstream.pool import PoolKey

T = TypeVar("T")
WAIT = 10.0  # seconds any one response may take in these tests


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
    """Run a test's coroutine on uvloop, as the gateway runs, bounded in time."""
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def h2_pool(port: int, grpc: bool = True, **settings: Any) -> H2TargetPool:
    key = PoolKey(host="127.0.0.1", port=port, tls=None, server_hostname=None, max_idle=settings.get("max_idle", 8),
                  idle_timeout=settings.get("idle_timeout", 60.0), connect_timeout=5.0, http2=True, grpc=grpc)
    return H2TargetPool(key)


def request_head(method: str, path: str, port: int, fields: dict[str, str] | None = None,
                 deadline_ms: int = 5000, chunked: bool = True) -> bytes:
    """A head as the exchange renders it: host first, then the gateway's deadline, framing last."""
    lines = [f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{port}", f"x-request-deadline: {deadline_ms}"]
    lines += [f"{name}: {value}" for name, value in (fields or {}).items()]
    if chunked:
        lines.append("transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def grpc_head(method: str, port: int, metadata: dict[str, str] | None = None, deadline_ms: int = 5000) -> bytes:
    return request_head("POST", f"/frontgate.test.Notes/{method}", port,
                        {"content-type": "application/grpc", **(metadata or {})}, deadline_ms)


class Received:
    """A `ResponseReceiver` that records what the upstream side reports."""

    grpc_status: int | None = None

    def __init__(self) -> None:
        self.status = 0
        self.lines: list[bytes] = []
        self.content_length: int | None = None
        self.body = bytearray()
        self.trailers: list[bytes] | None = None
        self.completed: bool | None = None
        self.error: HttpError | None = None
        self.failed_after_start: bool | None = None
        self.write_paused: list[bool] = []
        self.done = asyncio.Event()
        self.body_grew = asyncio.Event()
        self.on_body: Callable[[bytes], None] | None = None

    def header(self, name: str) -> str | None:
        return _field(self.lines, name)

    def trailer(self, name: str) -> str | None:
        return _field(self.trailers or [], name)

    # --- ResponseReceiver ---

    def response_head(self, status: int, lines: list[bytes], chunked: bool, content_length: int | None) -> None:
        self.status, self.lines, self.content_length = status, lines, content_length

    def response_body(self, data: bytes) -> None:
        self.body += data
        self.body_grew.set()
        if self.on_body is not None:
            self.on_body(data)

    def response_trailers(self, lines: list[bytes]) -> None:
        self.trailers = lines

    def response_complete(self, reusable: bool) -> None:
        self.completed = reusable
        self.done.set()

    def upstream_failed(self, error: HttpError, response_started: bool) -> None:
        self.error, self.failed_after_start = error, response_started
        self.done.set()

    def upstream_write_paused(self, paused: bool) -> None:
        self.write_paused.append(paused)

    def flush(self) -> None:
        pass


def _field(lines: list[bytes], name: str) -> str | None:
    prefix = name.encode() + b": "
    for line in lines:
        if line.startswith(prefix):
            return line[len(prefix):-2].decode("latin-1")
    return None


async def take_stream(pool: H2TargetPool) -> UpstreamChannel:
    """What the exchange does: a stream on a live connection, else a new connection."""
    return pool.take_idle() or await pool.connect()


async def call(pool: H2TargetPool, head: bytes, body: list[bytes], chunked: bool = True,
               between: Callable[[Received], Awaitable[None]] | None = None) -> Received:
    """One request through the pool: head, body pieces (awaiting `between` after each), end, response."""
    stream = await take_stream(pool)
    received = Received()
    stream.start(received, head, False, chunked)
    for piece in body:
        stream.write(piece)
        if between is not None:
            await between(received)
    stream.end_body()
    await asyncio.wait_for(received.done.wait(), WAIT)
    pool.release(stream, received.completed is True)
    return received
