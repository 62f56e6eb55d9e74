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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.connection import SSLConnection, parse_url

from frontgate.store.base import RateCheck, SlotCheck, StoreUnavailable, Verdict
from frontgate.store.lua import DECIDE, DECIDE_SHA, RENEW_SHA, SCRIPTS
from frontgate.store.resp import ReplyError, RespConnection, bulk, command, encode_parts

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
        options: dict[str, Any] = parse_url(url)
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
        self._ready: asyncio.Event | None = None
        self._held: dict[bytes, tuple[bytes, ...]] = {}
        self._tokens = itertools.count(1)
        self._token_prefix = os.urandom(6).hex().encode() + b":"
        self.connects = 0  # successful handshakes, for tests and status pages

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
        self._lost = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._maintain())
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), STARTUP_WAIT)

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
                log.debug("redis store: connect failed: %s", error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = FIRST_BACKOFF
            assert self._lost is not None and self._ready is not None
            self._lost.clear()
            self._conn = conn
            self.connects += 1
            self._ready.set()
            log.info("redis store: connected (%d)", self.connects)
            await self._lost.wait()
            self._conn = None
            log.warning("redis store: connection lost; requests follow store.on_failure until it is back")
            await asyncio.sleep(FIRST_BACKOFF)

    def _connection_lost(self, conn: RespConnection) -> None:
        if conn is self._conn and self._lost is not None:
            self._conn = None
            self._lost.set()

    async def _connect(self) -> RespConnection:
        loop = asyncio.get_running_loop()
        target = self.target
        host, port = target.host, target.port
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
        sentinel = Sentinel(
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

    async def decide(self, rates: Sequence[RateCheck], slots: Sequence[SlotCheck]) -> Verdict:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("redis is not connected")
        token = self._token_prefix + b"%d" % next(self._tokens) if slots else b""
        keys, argv = decide_arguments(rates, slots, token)
        count = 3 + len(keys) + argument_count(rates, slots)
        deadline = asyncio.get_running_loop().time() + self.timeout
        reply = await conn.send(encode_parts(count, _evalsha_head(keys) + argv), deadline)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Scripts were flushed behind our back: send the body once, under the same deadline.
            head = [bulk(b"EVAL"), bulk(DECIDE), bulk(b"%d" % len(keys)), *(bulk(k) for k in keys)]
            reply = await conn.send(encode_parts(count, head + argv), deadline)
        verdict = parse_verdict(reply, len(rates), len(slots))
        if verdict.allowed and slots:
            verdict.token = token
            self._held[token] = tuple(s.key for s in slots)
        return verdict

    def release(self, slots: Sequence[SlotCheck], token: bytes) -> None:
        keys = self._held.pop(token, None)
        conn = self._conn
        if keys is None or conn is None:
            return  # the lease frees it
        deadline = asyncio.get_running_loop().time() + self.timeout
        for key in keys:
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


def _evalsha_head(keys: list[bytes]) -> list[bytes]:
    return [_EVALSHA, bulk(b"%d" % len(keys)), *(bulk(k) for k in keys)]


def decide_arguments(rates: Sequence[RateCheck], slots: Sequence[SlotCheck], token: bytes) -> tuple[
        list[bytes], list[bytes]]:
    """KEYS and bulk-encoded ARGV of the DECIDE script."""
    keys = [r.key for r in rates] + [s.key for s in slots]
    argv = [bulk(b"%d" % len(rates)), bulk(b"%d" % len(slots)), bulk(token), _LEASE]
    for check in rates:
        argv.append(_rule_args(check))
    for slot in slots:
        argv.append(bulk(b"%d" % slot.max))
    return keys, argv


_LEASE = bulk(b"%d" % SLOT_LEASE_MS)
_RULE_ARGS: dict[tuple[int, int], bytes] = {}


def _rule_args(check: RateCheck) -> bytes:
    """Two bulk strings (interval, tolerance) per rule, encoded once. Counts as two arguments."""
    rule = check.rule
    cache_key = (rule.interval_us, rule.tolerance_us)
    encoded = _RULE_ARGS.get(cache_key)
    if encoded is None:
        encoded = bulk(b"%d" % rule.interval_us) + bulk(b"%d" % rule.tolerance_us)
        if len(_RULE_ARGS) < 4096:
            _RULE_ARGS[cache_key] = encoded
    return encoded


def argument_count(rates: Sequence[RateCheck], slots: Sequence[SlotCheck]) -> int:
    return 4 + 2 * len(rates) + len(slots)


def parse_verdict(reply: object, n: int, m: int) -> Verdict:
    if isinstance(reply, ReplyError):
        raise StoreUnavailable(f"redis refused the decision: {reply}")
    if not isinstance(reply, list) or len(reply) != 2 + 2 * n + n + m:
        raise StoreUnavailable("redis returned a malformed decision")
    return Verdict(
        allowed=reply[0] == 1,
        remaining=[int(reply[2 + 2 * i]) for i in range(n)],
        reset_us=[int(reply[3 + 2 * i]) for i in range(n)],
        retry_after_us=int(reply[1]),
        denied=[reply[2 + 2 * n + i] == 1 for i in range(n + m)],
    )
