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
from dataclasses import dataclass, field
from typing import Any, Protocol

MICROS = 1_000_000


class StoreUnavailable(Exception):
    """The store could not decide within `store.timeout` (down, frozen, refused, or reconnecting)."""


@dataclass(frozen=True, slots=True)
class RateRule:
    """GCRA parameters of one limit, precomputed at config compile time: `RateRule.of(100, 1, burst=20)`."""

    count: int  # N in `N/period`
    period: int  # seconds
    burst: int
    interval_us: int  # time between two requests at the sustained rate
    tolerance_us: int  # capacity * interval: how far TAT may run ahead of now

    @classmethod
    def of(cls, count: int, period: int, burst: int = 0) -> RateRule:
        # Microsecond resolution: rates above 1,000,000/s per key behave as 1,000,000/s.
        interval = max(1, (period * MICROS) // count)
        return cls(count, period, burst, interval, (count + burst) * interval)

    @property
    def capacity(self) -> int:
        return self.count + self.burst


@dataclass(frozen=True, slots=True)
class DecisionPlan:
    """The fixed part of one kind of decision (which rules, which concurrency maxima), built once at config
    compile time; a request adds only its keys: one per rule, then one per slot."""

    rules: tuple[RateRule, ...]
    slot_maxes: tuple[int, ...] = ()
    # What a store derives from the plan once (the Redis store: the command's fixed bytes).
    encoded: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def key_count(self) -> int:
        return len(self.rules) + len(self.slot_maxes)


@dataclass(slots=True)
class Verdict:
    allowed: bool
    remaining: list[int]  # per rule, after this request (unconsumed when refused)
    reset_us: list[int]  # per rule: time until the quota is whole again
    retry_after_us: int  # when refused by a rule: time until this request would be admitted
    denied: int  # bit i set: check i (rules first, then slots) refused the request
    token: bytes | None = None  # set when slots were acquired: hand it back to `release`


class LimitStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def decide(self, plan: DecisionPlan, keys: Sequence[bytes]) -> Verdict:
        """Check and (only if every check passes) consume. Raises StoreUnavailable within the timeout."""
        ...

    def release(self, plan: DecisionPlan, keys: Sequence[bytes], token: bytes) -> None:
        """Give back the concurrency slots taken by an admitted request. Never blocks, never raises."""
        ...


def ceil_seconds(micros: int) -> int:
    return -(-micros // MICROS)
