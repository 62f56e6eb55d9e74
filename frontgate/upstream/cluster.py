"""An upstream: its targets, their protection state, and how one is chosen.

Targets that are unhealthy (active checks), ejected (outliers) or behind an open breaker are skipped by
every balancer. Protection state lives in the `UpstreamRegistry`, so it survives a reload.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import reduce
from math import gcd
from typing import Protocol
from urllib.parse import urlsplit

from frontgate.config.schema import Upstream
from frontgate.routing.split import sticky_key_from
from frontgate.upstream.h2pool import H2TargetPool
from frontgate.upstream.pool import PoolKey, TargetPool, UpstreamPool
from frontgate.upstream.resilience import (
    BreakerSettings,
    CircuitBreaker,
    OutlierSettings,
    OutlierTracker,
    RetryBudget,
)


class TargetState:
    """What the gateway knows about one target's health, kept across reloads."""

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self.breaker = CircuitBreaker(name, BreakerSettings(), clock)
        self.outlier: OutlierTracker | None = None
        self.healthy = True  # active health checks; True until a check says otherwise
        self.probe_failures = 0
        self.probe_successes = 0
        self.failures = 0
        self.requests = 0

    def available(self) -> bool:
        if not self.healthy:
            return False
        if self.outlier is not None and self.outlier.ejected():
            return False
        return self.breaker.closed or self.breaker.admits()


class UpstreamState:
    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.breaker = CircuitBreaker(f"upstream {name}", BreakerSettings(), clock)
        self.budget = RetryBudget()
        self.in_flight = 0


class UpstreamRegistry:
    """Pools and protection state that outlive config generations, keyed by what identifies them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._pools: dict[PoolKey, UpstreamPool] = {}
        self._targets: dict[tuple[str, str], TargetState] = {}
        self._upstreams: dict[str, UpstreamState] = {}

    def pool(self, key: PoolKey) -> UpstreamPool:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = H2TargetPool(key) if key.http2 else TargetPool(key)
        return pool

    def target_state(self, upstream: str, url: str) -> TargetState:
        state = self._targets.get((upstream, url))
        if state is None:
            state = self._targets[(upstream, url)] = TargetState(f"{upstream} {url}", self.clock)
        return state

    def upstream_state(self, name: str) -> UpstreamState:
        state = self._upstreams.get(name)
        if state is None:
            state = self._upstreams[name] = UpstreamState(name, self.clock)
        return state

    def retain_only(self, keys: set[PoolKey]) -> None:
        """After a reload: close pools no generation uses any more (their busy connections finish)."""
        for key in list(self._pools):
            if key not in keys:
                self._pools.pop(key).close()

    def expire_idle(self, now: float) -> None:
        for pool in self._pools.values():
            pool.expire_idle(now)

    def close_all(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def pools(self) -> list[UpstreamPool]:
        return list(self._pools.values())


@dataclass(slots=True)
class Target:
    url: str
    host: str
    port: int
    weight: int
    host_header: bytes  # `host[:port]` as the target itself would expect it
    pool: UpstreamPool
    state: TargetState


class Picker(Protocol):
    def __call__(self, key: bytes | None = None, exclude: Collection[Target] = ()) -> Target | None: ...


class UpstreamCluster:
    def __init__(self, name: str, config: Upstream, registry: UpstreamRegistry, tls: ssl.SSLContext | None) -> None:
        self.name = name
        self.config = config
        self.preserve_host = config.preserve_host
        state = registry.upstream_state(name)
        breaker = config.circuit_breaker
        settings = BreakerSettings(breaker.max_in_flight, breaker.error_ratio, breaker.min_requests,
                                   breaker.window, breaker.open_for)
        state.breaker.settings = settings
        self.state = state
        self.targets: list[Target] = []
        for weighted in config.weighted_targets:
            target = self._target(weighted.url, weighted.weight, registry, tls)
            target.state.breaker.settings = settings
            if config.outlier is None:
                target.state.outlier = None
            else:
                outlier = config.outlier
                outlier_settings = OutlierSettings(
                    consecutive_failures=outlier.consecutive_failures, eject_for=outlier.eject_for,
                    max_ejected=outlier.max_ejected, failure_ratio=outlier.failure_ratio,
                    min_requests=outlier.min_requests, window=outlier.window,
                )
                if target.state.outlier is None:
                    target.state.outlier = OutlierTracker(target.state.name, outlier_settings, registry.clock)
                target.state.outlier.settings = outlier_settings
            if config.health_check is None:
                target.state.healthy = True  # checks switched off: nothing says otherwise
            self.targets.append(target)
        # A target to send to, or None when none is available. The second argument (targets already tried)
        # is honoured when another target is available.
        self.pick: Picker = _build_picker(config.balance, self.targets)
        self.hash_key = sticky_key_from(config.hash_on) if config.balance == "hash" else None

    def _target(self, url: str, weight: int, registry: UpstreamRegistry, tls: ssl.SSLContext | None) -> Target:
        config = self.config
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        key = PoolKey(
            host=host,
            port=port,
            tls=tls if secure else None,
            server_hostname=(config.tls.server_name if config.tls and config.tls.server_name else host),
            max_idle=config.pool.max_idle,
            idle_timeout=config.pool.idle_timeout,
            connect_timeout=config.pool.connect_timeout,
            http2=config.protocol != "http",
            grpc=config.protocol == "grpc",
        )
        netloc = f"[{host}]" if ":" in host else host
        default_port = port == (443 if secure else 80)
        host_header = (netloc if default_port else f"{netloc}:{port}").encode("ascii")
        pool = registry.pool(key)
        pool.label = f"{self.name} target {url}"
        return Target(url, host, port, weight, host_header, pool, registry.target_state(self.name, url))

    def pool_keys(self) -> set[PoolKey]:
        return {t.pool.key for t in self.targets}

    def try_ended(self, target: Target, ok: bool) -> None:
        """Account for a finished try to `target` (proxied or an aggregate's leg): in-flight counts, the
        target's and the upstream's breakers, outlier detection."""
        state = target.state
        target.pool.in_flight -= 1
        self.state.in_flight -= 1
        state.requests += 1
        if not ok:
            state.failures += 1
        if state.breaker.needs_outcomes:
            state.breaker.record(ok)
        if self.state.breaker.needs_outcomes:
            self.state.breaker.record(ok)
        if state.outlier is not None:
            state.outlier.record(ok, self.may_eject)

    def may_eject(self) -> bool:
        """Would one more ejection stay within `outlier.max_ejected` of the targets?"""
        if self.config.outlier is None:
            return False
        ejected = sum(1 for t in self.targets if t.state.outlier is not None and t.state.outlier.ejected())
        return (ejected + 1) / len(self.targets) <= self.config.outlier.max_ejected


def _build_picker(balance: str, targets: list[Target]) -> Picker:
    live = [t for t in targets if t.weight > 0] or targets
    if len(live) == 1:
        only = live[0]
        return lambda key=None, exclude=(): only if only.state.available() else None
    if balance == "random":
        return _random_picker(live)
    if balance == "least_request":
        return _least_request_picker(live)
    if balance == "hash":
        return _hash_picker(live)
    return _round_robin_picker(live)


def _round_robin_picker(targets: list[Target]) -> Picker:
    # Weighted round robin over an interleaved schedule, so weight 3:1 gives a,b,a,a not a,a,a,b.
    schedule = _interleave(targets)
    size = len(schedule)
    position = random.randrange(size)  # workers start at different places

    def pick(key: bytes | None = None, exclude: Collection[Target] = ()) -> Target | None:
        nonlocal position
        fallback = None
        for _ in range(size):
            position = (position + 1) % size
            target = schedule[position]
            if target.state.available():
                if target not in exclude:
                    return target
                fallback = fallback or target
        return fallback

    return pick


def _random_picker(targets: list[Target]) -> Picker:
    weights = [t.weight for t in targets]

    def pick(key: bytes | None = None, exclude: Collection[Target] = ()) -> Target | None:
        target = random.choices(targets, weights)[0]
        if target.state.available() and target not in exclude:
            return target
        candidates = [t for t in targets if t.state.available()]
        fresh = [t for t in candidates if t not in exclude] or candidates
        return random.choices(fresh, [t.weight for t in fresh])[0] if fresh else None

    return pick


def _least_request_picker(targets: list[Target]) -> Picker:
    def pick(key: bytes | None = None, exclude: Collection[Target] = ()) -> Target | None:
        candidates = [t for t in targets if t.state.available()]
        fresh = [t for t in candidates if t not in exclude] or candidates
        if len(fresh) < 2:
            return fresh[0] if fresh else None
        # Power of two choices: two random targets, the one with fewer requests in flight per weight.
        a, b = random.sample(fresh, 2)
        return a if a.pool.in_flight / a.weight <= b.pool.in_flight / b.weight else b

    return pick


_POINTS_PER_WEIGHT = 100  # virtual nodes per unit of weight: smooth spread, few keys move when targets change


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _hash_picker(targets: list[Target]) -> Picker:
    """Consistent hashing on a ring: adding or removing a target moves only the keys of its arcs."""
    divisor = reduce(gcd, (t.weight for t in targets)) or 1
    ring = sorted(
        (_point(f"{t.url}#{i}".encode()), index)
        for index, t in enumerate(targets)
        for i in range(_POINTS_PER_WEIGHT * t.weight // divisor)
    )
    points = [p for p, _ in ring]
    fallback = _round_robin_picker(targets)

    def pick(key: bytes | None = None, exclude: Collection[Target] = ()) -> Target | None:
        if key is None:
            return fallback(None, exclude)
        start = bisect.bisect(points, _point(key))
        seen: set[int] = set()
        first_available = None
        for step in range(len(ring)):
            index = ring[(start + step) % len(ring)][1]
            if index in seen:
                continue
            seen.add(index)
            target = targets[index]
            if target.state.available():
                if target not in exclude:
                    return target
                first_available = first_available or target
            if len(seen) == len(targets):
                break
        return first_available

    return pick


def _interleave(targets: list[Target]) -> list[Target]:
    """Smooth weighted round robin (as nginx does it), unrolled once into a fixed schedule."""
    divisor = reduce(gcd, (t.weight for t in targets)) or 1
    weights = [t.weight // divisor for t in targets]
    current = [0] * len(targets)
    total = sum(weights)
    schedule = []
    for _ in range(total):
        for i, weight in enumerate(weights):
            current[i] += weight
        best = max(range(len(targets)), key=current.__getitem__)
        current[best] -= total
        schedule.append(targets[best])
    return schedule
