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

from frontgate.store.base import MICROS, RateCheck, SlotCheck, Verdict

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

    async def decide(self, rates: Sequence[RateCheck], slots: Sequence[SlotCheck]) -> Verdict:
        return self.decide_now(rates, slots)

    def decide_now(self, rates: Sequence[RateCheck], slots: Sequence[SlotCheck]) -> Verdict:
        now = int(self._clock() * MICROS)
        if now >= self._next_sweep:
            self._sweep(now)
        tats = self._tat
        allowed = True
        retry = 0
        remaining: list[int] = []
        reset: list[int] = []
        denied: list[bool] = []
        new_tats: list[int] = []
        for check in rates:
            rule = check.rule
            interval = rule.interval_us
            tat = tats.get(check.key, now)
            if tat < now:
                tat = now
            new_tat = tat + interval
            allow_at = new_tat - rule.tolerance_us
            if allow_at > now:
                allowed = False
                retry = max(retry, allow_at - now)
                remaining.append(0)
                reset.append(tat - now)
                denied.append(True)
                new_tats.append(tat)
            else:
                remaining.append((now - allow_at) // interval)
                reset.append(new_tat - now)
                denied.append(False)
                new_tats.append(new_tat)
        in_flight = self._in_flight
        for slot in slots:
            full = in_flight.get(slot.key, 0) >= slot.max
            denied.append(full)
            if full:
                allowed = False
        if not allowed:
            # Nothing is consumed: the limits that would have admitted report their quota untouched.
            for i, check in enumerate(rates):
                if not denied[i]:
                    remaining[i] += 1
                    reset[i] -= check.rule.interval_us
            return Verdict(False, remaining, [max(0, r) for r in reset], retry, denied)
        for check, new_tat in zip(rates, new_tats, strict=True):
            tats[check.key] = new_tat
        token = None
        if slots:
            for slot in slots:
                in_flight[slot.key] = in_flight.get(slot.key, 0) + 1
            token = self._token_prefix + b"%d" % next(self._tokens)
        return Verdict(True, remaining, reset, 0, denied, token)

    def release(self, slots: Sequence[SlotCheck], token: bytes) -> None:
        in_flight = self._in_flight
        for slot in slots:
            count = in_flight.get(slot.key, 0) - 1
            if count > 0:
                in_flight[slot.key] = count
            else:
                in_flight.pop(slot.key, None)

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
