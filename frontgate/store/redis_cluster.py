"""The Redis Cluster store (`redis+cluster://host:port[,host:port]`), through redis-py's cluster client.

redis-py discovers the slot map and follows MOVED/ASK. The keys of one request are grouped by hash slot and
each group is one DECIDE script call (a script may only touch keys of one slot); the groups go out
concurrently, so a request still waits for one round trip. Unlike a single server, the groups are not one
atomic unit: a request refused by a limit whose key lives on another slot may have consumed one unit of its
other limits (never more than one unit per refused request). Store failures follow the same rules as the
single-server store: the whole decision is bounded by `store.timeout`, and while the cluster is unreachable
decisions fail at once and a background probe reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from frontgate.store.base import DecisionPlan, StoreUnavailable, Verdict
from frontgate.store.lua import DECIDE, DECIDE_SHA, RENEW
from frontgate.store.redis_store import (
    FIRST_BACKOFF,
    MAX_BACKOFF,
    PROBE_TIMEOUT,
    RENEW_EVERY,
    SLOT_LEASE_MS,
    STARTUP_WAIT,
    parse_verdict,
)

log = logging.getLogger("frontgate.store")


def cluster_client(url: str, timeout: float) -> RedisCluster:
    parts = urlsplit(url)
    nodes = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        nodes.append(ClusterNode(host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme.lower().startswith("rediss"),
        socket_timeout=max(timeout, PROBE_TIMEOUT),
        socket_connect_timeout=PROBE_TIMEOUT,
        retry=Retry(NoBackoff(), 0),  # the deadline is ours: no hidden retries
        require_full_coverage=False,
    )


class ClusterStore:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: RedisCluster | None = None
        self._up = False
        self._probe: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._held: dict[bytes, tuple[bytes, ...]] = {}
        self._tokens = itertools.count(1)
        self._token_prefix = os.urandom(6).hex().encode() + b":"
        self._background: set[asyncio.Task[Any]] = set()
        self._first_attempt = asyncio.Event()

    def __repr__(self) -> str:
        return f"<ClusterStore {'up' if self._up else 'down'} held_slots={len(self._held)}>"

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = cluster_client(self.url, self.timeout)
        loop = asyncio.get_running_loop()
        self._probe = loop.create_task(self._reconnect())
        self._renewer = loop.create_task(self._renew_forever())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), STARTUP_WAIT)

    async def close(self) -> None:
        for task in (self._probe, self._renewer, *self._background):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
        self._client = None
        self._up = False

    async def _reconnect(self) -> None:
        backoff = FIRST_BACKOFF
        while True:
            assert self._client is not None
            try:
                await asyncio.wait_for(self._client.initialize(), PROBE_TIMEOUT * 4)
                await asyncio.wait_for(self._client.ping(target_nodes=RedisCluster.PRIMARIES), PROBE_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("redis cluster store: probe failed: %s", error)
                self._first_attempt.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self._up = True
            self._first_attempt.set()
            log.info("redis cluster store: connected")
            return

    def _went_down(self, error: BaseException) -> None:
        if self._up:
            log.warning("redis cluster store: %s; requests follow store.on_failure until it is back", error)
        self._up = False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def decide(self, plan: DecisionPlan, keys: Sequence[bytes]) -> Verdict:
        client = self._client
        if client is not None and not self._up and not self._first_attempt.is_set():
            # A worker that has just started listening: wait for the first connection attempt.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_attempt.wait(), STARTUP_WAIT)
        if client is None or not self._up:
            raise StoreUnavailable("redis cluster is not connected")
        token = self._token_prefix + b"%d" % next(self._tokens) if plan.slot_maxes else b""
        n = len(plan.rules)
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key_slot(key), []).append(index)
        try:
            async with asyncio.timeout(self.timeout):
                parts = await asyncio.gather(*(self._call(client, plan, keys, group, token) for group in
                                               groups.values()))
        except (TimeoutError, OSError, ConnectionError) as error:
            self._went_down(error)
            raise StoreUnavailable(f"redis cluster: {error or 'timed out'}") from error
        except Exception as error:  # redis-py's own errors (ClusterDownError, ResponseError, ...)
            raise StoreUnavailable(f"redis cluster: {error}") from error
        remaining, reset = [0] * n, [0] * n
        denied = retry = 0
        for group, verdict in zip(groups.values(), parts, strict=True):
            rules = [i for i in group if i < n]
            for position, index in enumerate(group):
                if verdict.denied >> position & 1:
                    denied |= 1 << index
            for position, index in enumerate(rules):
                remaining[index] = verdict.remaining[position]
                reset[index] = verdict.reset_us[position]
            retry = max(retry, verdict.retry_after_us)
        allowed = denied == 0
        if allowed and token:
            self._held[token] = tuple(keys[n:])
        return Verdict(allowed, remaining, reset, retry, denied, token if allowed and token else None)

    async def _call(self, client: RedisCluster, plan: DecisionPlan, keys: Sequence[bytes], group: list[int],
                    token: bytes) -> Verdict:
        n = len(plan.rules)
        rules = [plan.rules[i] for i in group if i < n]
        maxes = [plan.slot_maxes[i - n] for i in group if i >= n]
        args: list[Any] = [len(rules), len(maxes), SLOT_LEASE_MS]
        for rule in rules:
            args += [rule.interval_us, rule.tolerance_us]
        args += [*maxes, token]
        group_keys = [keys[i] for i in group]
        try:
            reply = await client.evalsha(DECIDE_SHA.decode(), len(group_keys), *group_keys, *args)
        except NoScriptError:
            reply = await client.eval(DECIDE.decode(), len(group_keys), *group_keys, *args)
        return parse_verdict(reply, len(rules))

    # --- the cache plugin's entries (frontgate/plugins/cache.py): a hash per URL ----------------------

    async def hget(self, key: bytes, field: bytes) -> bytes | None:
        if self._client is None or not self._up:
            raise StoreUnavailable("redis cluster is not connected")
        reply = await asyncio.wait_for(self._client.hget(key, field), self.timeout)
        return reply if isinstance(reply, bytes) else None

    def hset_nowait(self, key: bytes, field: bytes, value: bytes, ttl_ms: int) -> None:
        self._in_background(self._hset(key, field, value, ttl_ms))

    async def _hset(self, key: bytes, field: bytes, value: bytes, ttl_ms: int) -> None:
        assert self._client is not None
        await self._client.hset(key, field, value)
        await self._client.pexpire(key, ttl_ms)

    def delete_nowait(self, key: bytes) -> None:
        if self._client is not None:
            self._in_background(self._client.delete(key))

    def _in_background(self, work: Any) -> None:
        if self._client is None or not self._up:
            return
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def release(self, plan: DecisionPlan, keys: Sequence[bytes], token: bytes) -> None:
        held = self._held.pop(token, None)
        if held is None or self._client is None or not self._up:
            return
        for key in held:
            task = asyncio.ensure_future(self._client.zrem(key, token))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            client = self._client
            if client is None or not self._up:
                continue
            for token, held in list(self._held.items()):
                for key in held:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(
                            client.eval(RENEW.decode(), 1, key, SLOT_LEASE_MS, token),
                            PROBE_TIMEOUT,
                        )

