"""The retry policy of a route, compiled once: what may be retried, how often, and how long to wait.

Retries sit above the balancer (as in Finagle): each try may go to another target. Nothing a client sends
can change the policy; only the route's config does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from frontgate.config.schema import Retry

# RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Failure(StrEnum):
    CONNECT = "connect-failure"  # nothing was sent: safe to retry for any method
    RESET = "reset"  # the upstream closed or reset before a complete response head
    TIMEOUT = "timeout"  # per-try timeout
    STATUS = "status"  # a response whose status the policy retries
    PROTOCOL = "protocol"  # a response that broke HTTP: never retried (it may not be the network's fault)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    on_connect_failure: bool
    on_reset: bool
    on_timeout: bool
    statuses: frozenset[int]
    per_try_timeout: float | None
    budget: float
    min_retry_concurrency: int
    backoff_base: float
    backoff_max: float

    @classmethod
    def from_config(cls, config: Retry) -> RetryPolicy:
        words = set(config.retry_on)
        statuses = {int(w) for w in words if w.isdigit()}
        if "5xx" in words:
            statuses |= set(range(500, 600))
        if "gateway-error" in words:
            statuses |= {502, 503, 504}
        return cls(
            attempts=config.attempts,
            on_connect_failure="connect-failure" in words,
            on_reset="reset" in words,
            on_timeout="timeout" in words,
            statuses=frozenset(statuses),
            per_try_timeout=config.per_try_timeout,
            budget=config.budget,
            min_retry_concurrency=config.min_retry_concurrency,
            backoff_base=config.backoff.base,
            backoff_max=config.backoff.max,
        )

    def covers(self, failure: Failure) -> bool:
        if failure is Failure.CONNECT:
            return self.on_connect_failure
        if failure is Failure.RESET:
            return self.on_reset
        if failure is Failure.TIMEOUT:
            return self.on_timeout
        return failure is Failure.STATUS  # raised only for statuses in `statuses`

    def backoff(self, retry_number: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^(n-1))], so retries of many clients spread out."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (retry_number - 1)))
        return random.uniform(0, ceiling)


def replay_safe(method: str, has_idempotency_key: bool) -> bool:
    """May a request that reached the upstream be sent again?"""
    return method in IDEMPOTENT_METHODS or has_idempotency_key
