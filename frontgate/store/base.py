"""What a limit store decides, in the terms both backends share.

The rate algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp per key):
a limit of N per period P with `burst` B admits one request every `interval` = P/N on average and at most
`capacity` = N + B at once. Each key stores its TAT (theoretical arrival time); a request is admitted when
`max(TAT, now) + interval - capacity * interval <= now`, and admitting it moves TAT forward by `interval`.
All arithmetic is in integer microseconds so the in-process store and the Redis script agree exactly.

A decision checks every limit of one request together and is all-or-nothing: a request refused by one limit
consumes nothing from the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

MICROS = 1_000_000


class StoreUnavailable(Exception):
    """The store could not decide within `store.timeout` (down, frozen, refused, or reconnecting)."""


@dataclass(frozen=True, slots=True)
class RateRule:
    """GCRA parameters of one limit, precomputed at config compile time."""

    count: int  # N in `N/period`
    period: int  # seconds
    burst: int

    @property
    def capacity(self) -> int:
        return self.count + self.burst

    @property
    def interval_us(self) -> int:
        # Microsecond resolution: rates above 1,000,000/s per key behave as 1,000,000/s.
        return max(1, (self.period * MICROS) // self.count)

    @property
    def tolerance_us(self) -> int:
        return self.capacity * self.interval_us


@dataclass(frozen=True, slots=True)
class RateCheck:
    key: bytes
    rule: RateRule


@dataclass(frozen=True, slots=True)
class SlotCheck:
    """A concurrency limit: at most `max` requests in flight per key."""

    key: bytes
    max: int


@dataclass(slots=True)
class Verdict:
    allowed: bool
    remaining: list[int]  # per rate check, after this request (unconsumed when refused)
    reset_us: list[int]  # per rate check: time until the quota is whole again
    retry_after_us: int  # when refused by a rate limit: time until this request would be admitted
    denied: list[bool]  # per rate check, then per slot check: did this one refuse the request?
    token: bytes | None = None  # set when slots were acquired: hand it back to `release`


class LimitStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def decide(self, rates: Sequence[RateCheck], slots: Sequence[SlotCheck]) -> Verdict:
        """Check and (if every check passes) consume. Raises StoreUnavailable within the store's timeout."""
        ...

    def release(self, slots: Sequence[SlotCheck], token: bytes) -> None:
        """Give back the concurrency slots taken by an admitted request. Never blocks, never raises."""
        ...


def ceil_seconds(micros: int) -> int:
    return -(-micros // MICROS)
