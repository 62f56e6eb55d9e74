"""An upstream: its targets, how one is chosen, and the pool behind each."""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from math import gcd
from urllib.parse import urlsplit

from frontgate.config.schema import Upstream
from frontgate.upstream.pool import PoolKey, PoolRegistry, TargetPool


@dataclass(slots=True)
class Target:
    url: str
    host: str
    port: int
    weight: int
    host_header: bytes  # `host[:port]` as the target itself would expect it
    pool: TargetPool


class UpstreamCluster:
    def __init__(self, name: str, config: Upstream, pools: PoolRegistry, tls: ssl.SSLContext | None) -> None:
        self.name = name
        self.config = config
        self.preserve_host = config.preserve_host
        self.targets: list[Target] = []
        for weighted in config.weighted_targets:
            parts = urlsplit(weighted.url)
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
            )
            default_port = port == (443 if secure else 80)
            netloc = f"[{host}]" if ":" in host else host
            host_header = (netloc if default_port else f"{netloc}:{port}").encode("ascii")
            self.targets.append(Target(weighted.url, host, port, weighted.weight, host_header, pools.get(key)))
        self.pick: Callable[[], Target] = self._build_picker(config.balance)

    def pool_keys(self) -> set[PoolKey]:
        return {t.pool.key for t in self.targets}

    def _build_picker(self, balance: str) -> Callable[[], Target]:
        live = [t for t in self.targets if t.weight > 0] or self.targets
        if len(live) == 1:
            only = live[0]
            return lambda: only
        if balance == "random":
            weights = [t.weight for t in live]
            return lambda: random.choices(live, weights)[0]
        if balance == "least_request":
            return lambda: self._two_choices(live)
        # Weighted round robin over an interleaved schedule, so weight 3:1 gives a,b,a,a not a,a,a,b.
        schedule = _interleave(live)
        position = random.randrange(len(schedule))  # workers start at different places

        def next_target() -> Target:
            nonlocal position
            position = (position + 1) % len(schedule)
            return schedule[position]

        return next_target

    @staticmethod
    def _two_choices(targets: list[Target]) -> Target:
        # Power of two choices: two random targets, the one with fewer requests in flight.
        a, b = random.sample(targets, 2)
        return a if a.pool.in_flight / a.weight <= b.pool.in_flight / b.weight else b


def _interleave(targets: list[Target]) -> list[Target]:
    """Smooth weighted round robin (as nginx does it), unrolled once into a fixed schedule."""
    divisor = reduce(gcd, (t.weight for t in targets))
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
