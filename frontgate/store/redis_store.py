"""The Redis store: one atomic script per decision, every limit of a request in one round trip.

The hot path writes EVALSHA on a lean pipelined connection (`resp.RespConnection`); redis-py parses the URL
and, for `redis+sentinel://`, asks the sentinels where the master is. (`redis+cluster://` is served by
`redis_cluster.ClusterStore`.) A background task owns the connection: it connects, authenticates, selects
the database and loads the scripts in one pipelined handshake that doubles as the health probe, then waits
for the connection to drop and reconnects with a capped backoff. While no connection is up, a decision
fails at once: no request waits on a store known to be down, and no request makes a connection attempt.

Bounds: a decision takes at most `store.timeout`, everything included (a NOSCRIPT re-send goes out under
the same deadline). A frozen server costs at most one timeout per request in flight when it froze; after
that the connection is dropped and requests fail fast until a handshake succeeds again, which happens within
`MAX_BACKOFF + PROBE_TIMEOUT` of the server answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.connection import SSLConnection, parse_url

from frontgate.store.base import DecisionPlan, StoreUnavailable, Verdict
from frontgate.store.lua import DECIDE, DECIDE_SHA, RENEW_SHA, SCRIPTS
from frontgate.store.resp import ReplyError, RespConnection, bulk, command

log = logging.getLogger("frontgate.store")

FIRST_BACKOFF = 0.05
MAX_BACKOFF = 0.4  # with PROBE_TIMEOUT, limiting resumes well within a second of Redis answering again
PROBE_TIMEOUT = 0.25
SLOT_LEASE_MS = 30_000  # a slot of a crashed gateway frees itself after this
RENEW_EVERY = 10.0  # slots still held are renewed this often (streams can outlive a lease)
STARTUP_WAIT = 1.0  # `start` waits this long for the first connection, then serving goes on regardless


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect, from a `redis://`, `rediss://`, `unix://` or `redis+sentinel://` URL."""

    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        scheme = url.split("://", 1)[0].lower()
        if scheme in ("redis+sentinel", "rediss+sentinel"):
            return cls._sentinel(url, scheme.startswith("rediss"))
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        tls = None
        if options.get("connection_class") is SSLConnection:
            tls = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
            if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        return cls(
            host=options.get("host"), port=int(options.get("port", 6379)), path=options.get("path"),
            db=int(options.get("db", 0)), username=options.get("username"), password=options.get("password"),
            tls=tls,
        )

    @classmethod
    def _sentinel(cls, url: str, use_tls: bool) -> RedisTarget:
        # redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/DB]
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        sentinels = []
        for item in netloc.split(","):
            host, _, port = item.rpartition(":")
            sentinels.append((host.strip("[]") or "127.0.0.1", int(port or 26379)))
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a sentinel URL names the master: redis+sentinel://HOST:PORT/SERVICE[/DB]")
        query = parse_qs(parts.query)
        db = int(path[1]) if len(path) > 1 else int(query.get("db", ["0"])[0])
        return cls(
            host=None, port=0, path=None, db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=ssl.create_default_context() if use_tls else None,
            sentinels=tuple(sentinels), service=path[0],
        )


class RedisStore:
    def __init__(self, url: str, timeout: float) -> None:
        self.target = RedisTarget.from_url(url)
        self.timeout = timeout
        self._conn: RespConnection | None = None
        self._lost: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._held: dict[bytes, tuple[bytes, ...]] = {}
        self._tokens = itertools.count(1)
        self._token_prefix = os.urandom(6).hex().encode() + b":"
        self.connects = 0  # successful handshakes, for tests and status pages
        self._first_attempt_done = False
        self._first_attempt: asyncio.Event | None = None
        self._loop_time: Callable[[], float] = time.monotonic  # the loop's clock once started

    def __repr__(self) -> str:
        state = "up" if self._conn is not None else "down"
        return f"<RedisStore {state} connects={self.connects} held_slots={len(self._held)}>"

    @property
    def up(self) -> bool:
        return self._conn is not None

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop_time = asyncio.get_running_loop().time
        self._lost = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._maintain())
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), STARTUP_WAIT)

    async def close(self) -> None:
        for task in (self._task, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._renewer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _maintain(self) -> None:
        backoff = FIRST_BACKOFF
        while True:
            try:
                conn = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # refused, frozen, auth failure, sentinel without a master...
                if not self._first_attempt_done:
                    log.warning("redis store: cannot connect (%s); requests follow store.on_failure", error)
                self._first_attempt_over()
                log.debug("redis store: connect failed: %s", error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = FIRST_BACKOFF
            assert self._lost is not None
            self._lost.clear()
            self._conn = conn
            self.connects += 1
            self._first_attempt_over()
            log.info("redis store: connected (%d)", self.connects)
            await self._lost.wait()
            self._conn = None
            log.warning("redis store: connection lost; requests follow store.on_failure until it is back")
            await asyncio.sleep(FIRST_BACKOFF)

    def _first_attempt_over(self) -> None:
        self._first_attempt_done = True
        if self._first_attempt is not None:
            self._first_attempt.set()

    def _connection_lost(self, conn: RespConnection) -> None:
        if conn is self._conn and self._lost is not None:
            self._conn = None
            self._lost.set()

    async def _connect(self) -> RespConnection:
        loop = asyncio.get_running_loop()
        target = self.target
        host, port = target.host or "127.0.0.1", target.port
        if target.sentinels:
            host, port = await asyncio.wait_for(self._discover_master(), PROBE_TIMEOUT * 4)
        conn: RespConnection
        if target.path:
            _, conn = await asyncio.wait_for(
                loop.create_unix_connection(lambda: RespConnection(loop, self._connection_lost), target.path),
                PROBE_TIMEOUT,
            )
        else:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: RespConnection(loop, self._connection_lost), host, port, ssl=target.tls,
                    server_hostname=host if target.tls else None,
                ),
                PROBE_TIMEOUT,
            )
        try:
            await self._handshake(conn, loop.time() + PROBE_TIMEOUT)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _handshake(self, conn: RespConnection, deadline: float) -> None:
        target = self.target
        commands = []
        if target.password is not None:
            auth = [b"AUTH", target.password.encode()]
            if target.username:
                auth.insert(1, target.username.encode())
            commands.append(command(*auth))
        if target.db:
            commands.append(command(b"SELECT", b"%d" % target.db))
        for script in SCRIPTS.values():
            commands.append(command(b"SCRIPT", b"LOAD", script))
        replies = await asyncio.gather(*(conn.send(c, deadline) for c in commands))
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise StoreUnavailable(f"redis refused the handshake: {reply}")
        if set(replies[-len(SCRIPTS):]) != set(SCRIPTS):
            raise StoreUnavailable("redis returned unexpected script hashes")

    async def _discover_master(self) -> tuple[str, int]:
        from redis.asyncio.sentinel import Sentinel

        target = self.target
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT,
            sentinel_kwargs={"socket_timeout": PROBE_TIMEOUT, "socket_connect_timeout": PROBE_TIMEOUT},
        )
        try:
            assert target.service is not None
            host, port = await sentinel.discover_master(target.service)
            return str(host), int(port)
        finally:
            for client in sentinel.sentinels:
                await client.aclose()

    # --- decisions --------------------------------------------------------------------------------

    async def decide(self, plan: DecisionPlan, keys: Sequence[bytes]) -> Verdict:
        conn = self._conn
        if conn is None:
            conn = await self._first_connection()
        head, tail = plan.encoded.get("redis") or encode_plan(plan)
        if plan.slot_maxes:
            token = self._token_prefix + b"%d" % next(self._tokens)
            tail += bulk(token)
        else:
            token = b""
        if len(keys) == 1:
            body = b"$%d\r\n%s\r\n" % (len(keys[0]), keys[0])
        else:
            body = b"".join([b"$%d\r\n%s\r\n" % (len(k), k) for k in keys])
        deadline = self._loop_time() + self.timeout
        reply = await conn.send(head + body + tail, deadline)
        if type(reply) is ReplyError and str(reply).startswith("NOSCRIPT"):
            # Scripts were flushed behind our back: send the body once, under the same deadline.
            reply = await conn.send(head.replace(_EVALSHA, _EVAL, 1) + body + tail, deadline)
        verdict = parse_verdict(reply, len(plan.rules))
        if verdict.allowed and token:
            verdict.token = token
            self._held[token] = tuple(keys[len(plan.rules):])
        return verdict

    async def _first_connection(self) -> RespConnection:
        # A worker listens before its plugins have started: requests that arrive while the very first
        # connection is still being made wait for that one attempt (bounded by the connect and probe
        # timeouts) instead of slipping through unlimited. Every later outage fails fast.
        if self._first_attempt_done or self._first_attempt is None:
            raise StoreUnavailable("redis is not connected")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), STARTUP_WAIT)
        if self._conn is None:
            raise StoreUnavailable("redis is not connected")
        return self._conn

    # --- the cache plugin's entries (frontgate/plugins/cache.py): a hash per URL ----------------------

    async def hget(self, key: bytes, field: bytes) -> bytes | None:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("redis is not connected")
        reply = await conn.send(command(b"HGET", key, field), self._loop_time() + self.timeout)
        return reply if isinstance(reply, bytes) else None

    def hset_nowait(self, key: bytes, field: bytes, value: bytes, ttl_ms: int) -> None:
        conn = self._conn
        if conn is not None:
            deadline = self._loop_time() + self.timeout
            conn.send_nowait(command(b"HSET", key, field, value), deadline)
            conn.send_nowait(command(b"PEXPIRE", key, b"%d" % ttl_ms), deadline)

    def delete_nowait(self, key: bytes) -> None:
        conn = self._conn
        if conn is not None:
            conn.send_nowait(command(b"DEL", key), self._loop_time() + self.timeout)

    def release(self, plan: DecisionPlan, keys: Sequence[bytes], token: bytes) -> None:
        held = self._held.pop(token, None)
        conn = self._conn
        if held is None or conn is None:
            return  # the lease frees it
        deadline = asyncio.get_running_loop().time() + self.timeout
        for key in held:
            conn.send_nowait(command(b"ZREM", key, token), deadline)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            conn = self._conn
            if conn is None or not self._held:
                continue
            keys: list[bytes] = []
            tokens: list[bytes] = []
            for token, held in self._held.items():
                keys.extend(held)
                tokens.extend([token] * len(held))
            deadline = asyncio.get_running_loop().time() + max(self.timeout, PROBE_TIMEOUT)
            conn.send_nowait(
                command(b"EVALSHA", RENEW_SHA, b"%d" % len(keys), *keys, b"%d" % SLOT_LEASE_MS, *tokens), deadline
            )


_EVALSHA = bulk(b"EVALSHA") + bulk(DECIDE_SHA)
_EVAL = bulk(b"EVAL") + bulk(DECIDE)
_LEASE = bulk(b"%d" % SLOT_LEASE_MS)


def encode_plan(plan: DecisionPlan) -> tuple[bytes, bytes]:
    """The fixed bytes of a DECIDE call: (array header .. key count, ARGV before the token)."""
    n, m = len(plan.rules), len(plan.slot_maxes)
    argc = 3 + n + m + 3 + 2 * n + m + 1
    head = b"*%d\r\n" % argc + _EVALSHA + bulk(b"%d" % (n + m))
    tail = [bulk(b"%d" % n), bulk(b"%d" % m), _LEASE]
    for rule in plan.rules:
        tail += [bulk(b"%d" % rule.interval_us), bulk(b"%d" % rule.tolerance_us)]
    tail += [bulk(b"%d" % most) for most in plan.slot_maxes]
    if not plan.slot_maxes:
        tail.append(bulk(b""))  # no token; with slots, `decide` appends a fresh one
    encoded = (head, b"".join(tail))
    plan.encoded["redis"] = encoded
    return encoded


def parse_verdict(reply: object, n: int) -> Verdict:
    if isinstance(reply, ReplyError):
        raise StoreUnavailable(f"redis refused the decision: {reply}")
    if not isinstance(reply, list) or len(reply) != 3 + 2 * n:
        raise StoreUnavailable("redis returned a malformed decision")
    return Verdict(reply[0] == 1, reply[3::2], reply[4::2], reply[1], reply[2])
