"""Per-target and per-upstream protection, as pure bookkeeping on an injected clock (no I/O, no timers):
circuit breakers, outlier ejection and the retry budget. The exchange reports outcomes; balancers ask
`available()`. State changes are logged once, when they happen."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger("frontgate.upstream")

Clock = Callable[[], float]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    max_in_flight: int = 1000
    error_ratio: float | None = None  # None: only max_in_flight protects
    min_requests: int = 20
    window: float = 10.0
    open_for: float = 30.0
    half_open_probes: int = 1  # requests let through to test a recovering upstream


class CircuitBreaker:
    """Closed: everything passes while the error ratio over `window` stays under `error_ratio` (once there
    are `min_requests`). Open: everything fails fast for `open_for`. Half-open: a few probes pass; one
    success closes the breaker, one failure opens it again."""

    def __init__(self, name: str, settings: BreakerSettings, clock: Clock) -> None:
        self.name = name
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.settings = settings
        self._opened_at = 0.0
        self._probes = 0
        # One bucket per second: (second, requests, errors); old buckets fall off the left.
        self._buckets: deque[list[int]] = deque()
        self.rejections = 0

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: BreakerSettings) -> None:
        self._settings = settings
        self.max_in_flight = settings.max_in_flight
        self._update_flags()

    def _update_flags(self) -> None:
        # Plain attributes the hot path reads instead of calling: a closed breaker that does not count
        # errors only limits requests in flight, and needs to hear no outcomes.
        self.closed = self.state is BreakerState.CLOSED
        self.needs_outcomes = self._settings.error_ratio is not None or not self.closed

    def allow(self, in_flight: int) -> bool:
        if in_flight >= self.settings.max_in_flight:
            self.rejections += 1
            return False
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.settings.open_for:
                self.rejections += 1
                return False
            self._transition(BreakerState.HALF_OPEN)
            self._probes = 0
        if self.state is BreakerState.HALF_OPEN:
            if self._probes >= self.settings.half_open_probes:
                self.rejections += 1
                return False
            self._probes += 1
        return True

    def admits(self) -> bool:
        """Would a request pass now (ignoring in-flight limits)? Asks without changing any state."""
        if self.state is BreakerState.OPEN:
            return self._clock() - self._opened_at >= self.settings.open_for
        if self.state is BreakerState.HALF_OPEN:
            return self._probes < self.settings.half_open_probes
        return True

    def record(self, ok: bool) -> None:
        if self.settings.error_ratio is None and self.state is BreakerState.CLOSED:
            return  # tripping on errors is off: nothing to count
        if self.state is BreakerState.HALF_OPEN:
            if ok:
                self._buckets.clear()
                self._transition(BreakerState.CLOSED)
            else:
                self._open()
            return
        second = int(self._clock())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
            horizon = second - self.settings.window
            while buckets and buckets[0][0] <= horizon:
                buckets.popleft()
        bucket = buckets[-1]
        bucket[1] += 1
        ratio = self.settings.error_ratio
        if not ok and ratio is not None:
            bucket[2] += 1
            if self.state is BreakerState.CLOSED:
                requests = sum(b[1] for b in buckets)
                errors = sum(b[2] for b in buckets)
                if requests >= self.settings.min_requests and errors / requests >= ratio:
                    self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._transition(BreakerState.OPEN)

    def _transition(self, state: BreakerState) -> None:
        if state is not self.state:
            log.warning("circuit breaker %s: %s -> %s", self.name, self.state.value, state.value)
            self.state = state
            self._update_flags()


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    consecutive_failures: int = 5
    eject_for: float = 30.0
    failure_ratio: float | None = None  # also eject when this share of the window's requests failed
    min_requests: int = 20
    window: float = 10.0
    max_ejected: float = 0.5  # share of an upstream's targets that may be out at once
    max_eject_for: float = 300.0


class OutlierTracker:
    """Passive health of one target: `consecutive_failures` in a row eject it for `eject_for` times the
    number of times it was ejected before (capped), unless that would take more than `max_ejected` of the
    upstream's targets out. After the time it is back, and its next request is the probe."""

    def __init__(self, name: str, settings: OutlierSettings, clock: Clock) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self.consecutive = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self._window: deque[tuple[float, bool]] = deque()  # (when, ok) of recent requests, for failure_ratio

    def ejected(self) -> bool:
        return self.ejected_until > self._clock()

    def _ratio_exceeded(self, ok: bool) -> bool:
        now = self._clock()
        window = self._window
        window.append((now, ok))
        horizon = now - self.settings.window
        while window and window[0][0] < horizon:
            window.popleft()
        if ok or len(window) < self.settings.min_requests:
            return False
        failures = sum(1 for _, good in window if not good)
        ratio = self.settings.failure_ratio
        if ratio is not None and failures / len(window) >= ratio:
            window.clear()  # judged: the next ejection needs a fresh window
            return True
        return False

    def record(self, ok: bool, may_eject: Callable[[], bool]) -> None:
        if self.settings.failure_ratio is not None and self._ratio_exceeded(ok):
            self.consecutive = self.settings.consecutive_failures  # eject now, as a run of failures would
            ok = False
        if ok:
            self.consecutive = 0
            # Good service for a while after coming back lets the next ejection be short again.
            if self.ejections and self._clock() - self.ejected_until > self.settings.eject_for:
                self.ejections -= 1
            return
        self.consecutive = min(self.consecutive + 1, self.settings.consecutive_failures)
        if self.consecutive < self.settings.consecutive_failures or self.ejected():
            return
        if not may_eject():
            return  # ejecting this one too would take out more than max_ejected of the targets
        self.ejections += 1
        duration = min(self.settings.eject_for * self.ejections, self.settings.max_eject_for)
        self.ejected_until = self._clock() + duration
        self.consecutive = 0
        log.warning("target %s ejected for %.0fs after repeated failures", self.name, duration)


class RetryBudget:
    """Retries in flight to an upstream may be at most `ratio` of its requests in flight, though
    `min_concurrent` retries are always allowed: a struggling upstream never meets a retry storm (Envoy's
    retry budget). The ratio comes from the route asking, the counts from the upstream."""

    def __init__(self) -> None:
        self.active_requests = 0
        self.active_retries = 0
        self.retries = 0
        self.exhausted = 0

    def has_room(self, ratio: float, min_concurrent: int) -> bool:
        if self.active_retries >= max(min_concurrent, int(ratio * self.active_requests)):
            self.exhausted += 1
            return False
        return True

    def acquire(self) -> None:
        self.active_retries += 1
        self.retries += 1

    def release(self) -> None:
        self.active_retries -= 1
