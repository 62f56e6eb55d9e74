"""Breakers, ejection, budgets and balancers on a fake clock: no sockets, no sleeps."""

from __future__ import annotations

from collections import Counter

from frontgate.config.schema import Upstream
from frontgate.upstream.cluster import UpstreamCluster, UpstreamRegistry
from frontgate.upstream.resilience import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    OutlierSettings,
    OutlierTracker,
    RetryBudget,
)
from frontgate.upstream.retry import Failure, RetryPolicy, replay_safe


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_error_ratio_and_fails_fast_until_open_for_passes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("t", BreakerSettings(error_ratio=0.5, min_requests=4, window=10, open_for=5), clock)
    for ok in (True, False, True, False):
        assert breaker.allow(0)
        breaker.record(ok)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(0)
    clock.now += 5
    assert breaker.allow(0)  # the half-open probe
    assert not breaker.allow(0)  # only one probe at a time
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED


def test_breaker_probe_failure_reopens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("t", BreakerSettings(error_ratio=0.5, min_requests=2, open_for=5), clock)
    breaker.record(False)
    breaker.record(False)
    clock.now += 5
    assert breaker.allow(0)
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(0)


def test_breaker_forgets_errors_older_than_the_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("t", BreakerSettings(error_ratio=0.5, min_requests=4, window=10), clock)
    breaker.record(False)
    breaker.record(False)
    clock.now += 11
    breaker.record(False)
    breaker.record(True)
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED


def test_max_in_flight_rejects_without_error_ratio() -> None:
    breaker = CircuitBreaker("t", BreakerSettings(max_in_flight=2), FakeClock())
    assert breaker.allow(1)
    assert not breaker.allow(2)
    assert breaker.rejections == 1


def test_outlier_ejection_grows_with_repeats_and_respects_max_ejected() -> None:
    clock = FakeClock()
    tracker = OutlierTracker("t", OutlierSettings(consecutive_failures=2, eject_for=10), clock)
    for _ in range(2):
        tracker.record(False, lambda: True)
    assert tracker.ejected()
    clock.now += 10
    assert not tracker.ejected()
    for _ in range(2):
        tracker.record(False, lambda: True)
    assert tracker.ejected_until == clock.now + 20  # second ejection lasts twice as long
    other = OutlierTracker("u", OutlierSettings(consecutive_failures=1), clock)
    other.record(False, lambda: False)
    assert not other.ejected()


def test_retry_budget_allows_min_concurrency_then_a_share() -> None:
    budget = RetryBudget()
    budget.active_requests = 100
    for _ in range(20):
        assert budget.has_room(0.2, 3)
        budget.acquire()
    assert not budget.has_room(0.2, 3)
    small = RetryBudget()
    small.active_requests = 1
    for _ in range(3):
        assert small.has_room(0.2, 3)
        small.acquire()
    assert not small.has_room(0.2, 3)


def test_retry_policy_conditions_and_jittered_backoff() -> None:
    from frontgate.config.schema import Retry

    policy = RetryPolicy.from_config(Retry.model_validate(
        {"attempts": 3, "retry_on": ["reset", "gateway-error", "429"], "backoff": {"base": "10ms", "max": "40ms"}}))
    assert policy.statuses == frozenset({502, 503, 504, 429})
    assert policy.covers(Failure.RESET) and not policy.covers(Failure.TIMEOUT)
    assert not policy.covers(Failure.PROTOCOL)
    assert all(0 <= policy.backoff(n) <= min(0.04, 0.01 * 2 ** (n - 1)) for n in range(1, 6) for _ in range(50))
    assert replay_safe("PUT", False) and not replay_safe("POST", False) and replay_safe("POST", True)


def _cluster(targets: list[object], balance: str = "round_robin", **extra: object) -> UpstreamCluster:
    config = Upstream.model_validate({"targets": targets, "balance": balance, **extra})
    return UpstreamCluster("app", config, UpstreamRegistry(FakeClock()), None)


def test_weighted_round_robin_interleaves() -> None:
    cluster = _cluster([{"url": "http://a:1", "weight": 3}, {"url": "http://b:1", "weight": 1}])
    picks = [cluster.pick().url for _ in range(8)]  # type: ignore[union-attr]
    assert Counter(picks) == {"http://a:1": 6, "http://b:1": 2}
    assert "http://a:1http://a:1http://a:1http://a:1" not in "".join(picks)


def test_unavailable_targets_are_skipped_and_none_when_all_are_out() -> None:
    cluster = _cluster(["http://a:1", "http://b:1"])
    cluster.targets[0].state.healthy = False
    assert {cluster.pick().url for _ in range(6)} == {"http://b:1"}  # type: ignore[union-attr]
    cluster.targets[1].state.healthy = False
    assert cluster.pick() is None


def test_retry_prefers_a_target_not_yet_tried() -> None:
    for balance in ("round_robin", "random", "least_request"):
        cluster = _cluster(["http://a:1", "http://b:1"], balance)
        first = cluster.targets[0]
        assert all(cluster.pick(None, [first]) is cluster.targets[1] for _ in range(10))


def test_consistent_hashing_moves_few_keys_when_a_target_is_added() -> None:
    three = _cluster(["http://a:1", "http://b:1", "http://c:1"], "hash", hash_on="header:x-user")
    four = _cluster(["http://a:1", "http://b:1", "http://c:1", "http://d:1"], "hash", hash_on="header:x-user")
    keys = [f"user-{i}".encode() for i in range(2000)]
    before = {k: three.pick(k).url for k in keys}  # type: ignore[union-attr]
    after = {k: four.pick(k).url for k in keys}  # type: ignore[union-attr]
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "http://d:1" for k in moved)  # keys only move to the new target
    assert 0.15 < len(moved) / len(keys) < 0.35  # about a quarter, not a reshuffle
    spread = Counter(before.values())
    assert min(spread.values()) > 500


def test_outlier_failure_ratio_ejects_a_target_that_fails_often_but_not_in_a_row() -> None:
    clock = FakeClock()
    tracker = OutlierTracker("t", OutlierSettings(consecutive_failures=100, eject_for=10, failure_ratio=0.5,
                                                  min_requests=10, window=10), clock)
    for i in range(9):
        tracker.record(i % 2 == 0, lambda: True)  # alternating: never two failures in a row
        clock.now += 0.1
    assert not tracker.ejected()
    tracker.record(False, lambda: True)  # the tenth request: 5 of 10 failed
    assert tracker.ejected()
