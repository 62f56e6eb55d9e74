"""A lean pipelined RESP connection for the rate-limit hot path.

Every command sent during one event-loop iteration goes out in a single `transport.write`; replies come
back in order and are matched to their waiters FIFO, parsed by hiredis. There are no timers per command:
one watchdog timer, set for the earliest deadline of the commands waiting; when a command is past its
deadline the server is taken as stuck, every waiter fails at once and the connection is dropped (the owner
reconnects in the background). A full redis-py call costs ~75 us of CPU; a command here costs a few.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

import hiredis

from frontgate.store.base import StoreUnavailable

ReplyError = hiredis.ReplyError


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


class RespConnection(asyncio.Protocol):
    """One TCP (or TLS, or unix) connection to a Redis server, used only through `send`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[RespConnection], None]) -> None:
        self._loop = loop
        self._on_lost = on_lost
        self._reader = hiredis.Reader()
        self._waiters: deque[tuple[asyncio.Future[object] | None, float]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.Handle | None = None
        self._watchdog_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._suspect = False  # a deadline passed; confirmed after one more I/O poll

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<RespConnection {state} waiting={len(self._waiters)}>"

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not waiters:  # a reply nobody asked for: the stream is out of step
                self.close(StoreUnavailable("unexpected reply from redis"))
                return
            future, _ = waiters.popleft()
            self._suspect = False
            if future is not None and not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(StoreUnavailable("connection to redis lost"))
        if not self.closed:
            self.closed = True
            self._on_lost(self)

    # --- sending ----------------------------------------------------------------------------------

    def send(self, data: bytes, deadline: float) -> asyncio.Future[object]:
        """Queue one encoded command; the future gets its reply (a ReplyError is a value, not raised)."""
        future: asyncio.Future[object] = self._loop.create_future()
        if self.closed:
            future.set_exception(StoreUnavailable("connection to redis closed"))
            return future
        self._queue(data, future, deadline)
        return future

    def send_nowait(self, data: bytes, deadline: float) -> None:
        """Queue a command whose reply nobody waits for (releases, lease renewals)."""
        if not self.closed:
            self._queue(data, None, deadline)

    def _queue(self, data: bytes, future: asyncio.Future[object] | None, deadline: float) -> None:
        self._waiters.append((future, deadline))
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        watchdog = self._watchdog
        if watchdog is None or deadline < self._watchdog_at:
            if watchdog is not None:
                watchdog.cancel()
            self._arm(deadline)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.closed:
            out = self._out
            self._out = []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _arm(self, when: float) -> None:
        # The due time is kept here: uvloop hands back a plain Handle (no `when()`) for a zero delay.
        self._watchdog_at = when
        self._watchdog = self._loop.call_at(when, self._check_deadline)

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._waiters or self.closed:
            return
        # Replies come in order: any command past its deadline means the server is not answering. But a
        # busy loop runs its timers before it polls for I/O, so first give the sockets one poll: the reply
        # may be sitting there already.
        deadline = min(d for _, d in self._waiters)
        now = self._loop.time()
        if now < deadline:
            self._suspect = False
            self._arm(deadline)
        elif not self._suspect:
            self._suspect = True
            self._arm(now)
        else:
            self.close(StoreUnavailable("redis did not answer within store.timeout"))

    # --- ending -----------------------------------------------------------------------------------

    def close(self, error: StoreUnavailable | None = None) -> None:
        """Fail every waiter now and drop the connection."""
        self._fail_all(error or StoreUnavailable("connection to redis closed"))
        if self.transport is not None:
            self.transport.abort()
        if not self.closed:
            self.closed = True
            self._on_lost(self)

    def _fail_all(self, error: StoreUnavailable) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiters = self._waiters
        self._waiters = deque()
        self._out = []
        for future, _ in waiters:
            if future is not None and not future.done():
                future.set_exception(error)
