"""The in-process store: GCRA counters and concurrency slots in dicts, for a single instance.

Exact within one process; with `--workers N` (or several replicas) each process counts on its own, so use
`store.redis` there. The clock is injected (monotonic seconds) so tests run on a fake one. State outlives
config reloads: one store per process, see `process_memory_store`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence

from frontgate.store.base import MICROS, DecisionPlan, RateRule, Verdict

SWEEP_EVERY_US = MICROS  # drop keys whose bucket is full again at most once a second


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[bytes, int] = {}
        self._in_flight: dict[bytes, int] = {}
        self._next_sweep = 0
        self._tokens = itertools.count(1)
        self._token_prefix = os.urandom(4).hex().encode()

    def __repr__(self) -> str:
        return f"<MemoryStore keys={len(self._tat)} slots={sum(self._in_flight.values())}>"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def decide(self, plan: DecisionPlan, keys: Sequence[bytes]) -> Verdict:
        return self.decide_now(plan, keys)

    def admitter(self, rule: RateRule) -> Callable[[bytes], int]:
        """The common case (one rate limit, no slots) compiled for `rule`, without building a Verdict:
        `admit(key)` consumes and returns the time until the key's quota is whole again (microseconds,
        always > 0) if it has room; else it returns 0 and consumes nothing (`decide_now` then tells why)."""
        interval, tolerance = rule.interval_us, rule.tolerance_us
        tats = self._tat
        clock = self._clock

        def admit(key: bytes) -> int:
            now = int(clock() * MICROS)
            if now >= self._next_sweep:
                self._sweep(now)
            tat = tats.get(key, now)
            if tat < now:
                tat = now
            new_tat = tat + interval
            if new_tat - tolerance > now:
                return 0
            tats[key] = new_tat
            return new_tat - now

        return admit

    def decide_now(self, plan: DecisionPlan, keys: Sequence[bytes]) -> Verdict:
        now = int(self._clock() * MICROS)
        if now >= self._next_sweep:
            self._sweep(now)
        tats = self._tat
        rules = plan.rules  # (one limit admitted is the rate_limit plugin's lean path: see `admitter`)
        retry = 0
        denied = 0
        remaining: list[int] = []
        reset: list[int] = []
        new_tats: list[int] = []
        for i, rule in enumerate(rules):
            interval = rule.interval_us
            tat = tats.get(keys[i], now)
            if tat < now:
                tat = now
            new_tat = tat + interval
            allow_at = new_tat - rule.tolerance_us
            if allow_at > now:
                denied |= 1 << i
                retry = max(retry, allow_at - now)
                remaining.append(0)
                reset.append(tat - now)
            else:
                remaining.append((now - allow_at) // interval)
                reset.append(new_tat - now)
            new_tats.append(new_tat)
        n = len(rules)
        in_flight = self._in_flight
        for j, most in enumerate(plan.slot_maxes):
            if in_flight.get(keys[n + j], 0) >= most:
                denied |= 1 << (n + j)
        if denied:
            # Nothing is consumed: the limits that would have admitted report their quota untouched.
            for i, rule in enumerate(rules):
                if not denied >> i & 1:
                    remaining[i] += 1
                    reset[i] = max(0, reset[i] - rule.interval_us)
            return Verdict(False, remaining, reset, retry, denied)
        for i in range(n):
            tats[keys[i]] = new_tats[i]
        token = None
        if plan.slot_maxes:
            for key in keys[n:]:
                in_flight[key] = in_flight.get(key, 0) + 1
            token = self._token_prefix + b"%d" % next(self._tokens)
        return Verdict(True, remaining, reset, 0, 0, token)

    def release(self, plan: DecisionPlan, keys: Sequence[bytes], token: bytes) -> None:
        in_flight = self._in_flight
        for key in keys[len(plan.rules):]:
            count = in_flight.get(key, 0) - 1
            if count > 0:
                in_flight[key] = count
            else:
                in_flight.pop(key, None)

    def in_flight(self, key: bytes) -> int:
        return self._in_flight.get(key, 0)

    def _sweep(self, now: int) -> None:
        # A key whose TAT is in the past holds a full bucket: forgetting it changes nothing.
        stale = [key for key, tat in self._tat.items() if tat <= now]
        for key in stale:
            del self._tat[key]
        self._next_sweep = now + SWEEP_EVERY_US

    def __len__(self) -> int:
        return len(self._tat)


_PROCESS_STORE: MemoryStore | None = None


def process_memory_store() -> MemoryStore:
    """The one in-process store of this worker, shared by every config generation so a reload resets no
    counter."""
    global _PROCESS_STORE
    if _PROCESS_STORE is None:
        _PROCESS_STORE = MemoryStore()
    return _PROCESS_STORE
