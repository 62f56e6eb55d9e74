"""The in-process store and the rate_limit config, on a fake clock: no sockets, no wall time."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from frontgate.config.schema import GatewayConfig
from frontgate.pipeline.context import RequestContext
from frontgate.plugins.base import BuildContext
from frontgate.plugins.rate_limit import RateLimitConfig, RateLimitPlugin, ratelimit_value
from frontgate.plugins.rate_limit_keys import key_function
from frontgate.store import DecisionPlan, MemoryStore, RateRule


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admitted(store: MemoryStore, plan: DecisionPlan, keys: list[bytes], count: int) -> int:
    return sum(store.decide_now(plan, keys).allowed for _ in range(count))


def test_exactly_n_of_n_plus_k_back_to_back_requests_are_admitted() -> None:
    store = MemoryStore(FakeClock())
    plan = DecisionPlan((RateRule.of(10, 60),))
    assert admitted(store, plan, [b"k"], 15) == 10


def test_burst_adds_to_the_requests_admitted_at_once() -> None:
    store = MemoryStore(FakeClock())
    plan = DecisionPlan((RateRule.of(10, 60, burst=5),))
    assert admitted(store, plan, [b"k"], 30) == 15


def test_quota_refills_at_the_sustained_rate_and_never_beyond_capacity() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    plan = DecisionPlan((RateRule.of(10, 1),))  # one every 100 ms
    assert admitted(store, plan, [b"k"], 10) == 10
    clock.advance(0.35)
    assert admitted(store, plan, [b"k"], 10) == 3
    clock.advance(3600)
    assert admitted(store, plan, [b"k"], 50) == 10


def test_a_refused_request_reports_when_to_retry() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    plan = DecisionPlan((RateRule.of(2, 60),))  # one every 30 s
    admitted(store, plan, [b"k"], 2)
    clock.advance(10)
    verdict = store.decide_now(plan, [b"k"])
    assert not verdict.allowed
    assert verdict.retry_after_us == 20_000_000
    assert verdict.remaining == [0]
    clock.advance(20)
    assert store.decide_now(plan, [b"k"]).allowed


def test_worst_case_in_any_window_is_capacity_plus_the_rate_over_that_window() -> None:
    # The documented overshoot bound: in any window of length W, at most N + burst + N * W / P.
    clock = FakeClock()
    store = MemoryStore(clock)
    plan = DecisionPlan((RateRule.of(60, 60),))
    admits = []
    for step in range(2400):  # a request every 50 ms for 120 s
        if store.decide_now(plan, [b"k"]).allowed:
            admits.append(step * 0.05)
        clock.advance(0.05)
    for start in admits:
        in_window = sum(1 for t in admits if start <= t < start + 60)
        assert in_window <= 60 + 60


def test_remaining_counts_down_and_reset_says_when_the_quota_is_whole() -> None:
    store = MemoryStore(FakeClock())
    plan = DecisionPlan((RateRule.of(100, 1),))
    first = store.decide_now(plan, [b"k"])
    assert first.remaining == [99]
    assert first.reset_us == [10_000]
    for _ in range(9):
        last = store.decide_now(plan, [b"k"])
    assert last.remaining == [90]
    assert last.reset_us == [100_000]


def test_keys_are_counted_independently() -> None:
    store = MemoryStore(FakeClock())
    plan = DecisionPlan((RateRule.of(3, 60),))
    assert admitted(store, plan, [b"a"], 5) == 3
    assert admitted(store, plan, [b"b"], 5) == 3


def test_a_request_refused_by_one_limit_consumes_nothing_from_the_others() -> None:
    store = MemoryStore(FakeClock())
    plan = DecisionPlan((RateRule.of(100, 60), RateRule.of(2, 60)))
    assert admitted(store, plan, [b"wide", b"narrow"], 10) == 2
    verdict = store.decide_now(plan, [b"wide", b"narrow"])
    assert not verdict.allowed
    assert verdict.denied == 0b10
    assert verdict.remaining == [98, 0]  # only the two admitted requests were taken from the wide limit


def test_concurrency_slots_are_taken_and_given_back() -> None:
    store = MemoryStore(FakeClock())
    plan = DecisionPlan((), (2,))
    first = store.decide_now(plan, [b"c"])
    second = store.decide_now(plan, [b"c"])
    third = store.decide_now(plan, [b"c"])
    assert first.allowed and second.allowed and not third.allowed
    assert third.denied == 0b1
    assert first.token is not None
    store.release(plan, [b"c"], first.token)
    assert store.decide_now(plan, [b"c"]).allowed
    assert store.in_flight(b"c") == 2


def test_a_full_concurrency_limit_consumes_no_rate_quota() -> None:
    store = MemoryStore(FakeClock())
    plan = DecisionPlan((RateRule.of(5, 60),), (1,))
    assert store.decide_now(plan, [b"r", b"c"]).allowed
    assert admitted(store, plan, [b"r", b"c"], 10) == 0
    assert store.decide_now(DecisionPlan((RateRule.of(5, 60),)), [b"r"]).remaining == [3]


def test_keys_whose_bucket_is_full_again_are_forgotten() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    plan = DecisionPlan((RateRule.of(10, 1),))
    for i in range(100):
        store.decide_now(plan, [b"ip-%d" % i])
    assert len(store) == 100
    clock.advance(2)
    store.decide_now(plan, [b"fresh"])
    assert len(store) == 1


def test_rates_beyond_a_million_per_second_still_admit() -> None:
    store = MemoryStore(FakeClock())
    plan = DecisionPlan((RateRule.of(10_000_000, 1),))
    assert admitted(store, plan, [b"k"], 10_000) == 10_000


# --- config -------------------------------------------------------------------------------------------


def test_rate_limit_config_accepts_the_spec_shapes() -> None:
    config = RateLimitConfig.model_validate({
        "limits": [
            {"name": "per-ip", "rate": "100/s", "burst": 200, "key": "ip"},
            {"name": "writes", "rate": "60/m", "key": "consumer", "methods": ["post", "PUT"], "on_failure": "closed"},
            {"name": "daily", "rate": "5000/d", "key": "header:X-Tenant"},
            {"name": "org", "rate": "10/h", "key": "claim:org.id"},
        ],
        "concurrency": [{"name": "uploads", "max": 3, "key": "api_key"}],
    })
    assert config.limits[1].methods == ["POST", "PUT"]
    assert config.limits[0].rule.capacity == 300
    assert config.limits[2].rule.period == 86400


@pytest.mark.parametrize("limit", [
    {"name": "x", "rate": "100"},
    {"name": "x", "rate": "0/s"},
    {"name": "x", "rate": "10/w"},
    {"name": "x", "rate": "10/s", "key": "cookie:sid"},
    {"name": "x", "rate": "10/s", "key": "header:bad name"},
    {"name": "bad name", "rate": "10/s"},
    {"name": "x", "rate": "10/s", "burst": -1},
    {"name": "x", "rate": "10/s", "unknown": 1},
    {"name": "x", "rate": "10/s", "on_failure": "maybe"},
])
def test_rate_limit_config_rejects_bad_limits(limit: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RateLimitConfig.model_validate({"limits": [limit]})


def test_limit_names_must_be_unique_in_one_plugin() -> None:
    with pytest.raises(ValidationError, match="unique"):
        RateLimitConfig.model_validate({
            "limits": [{"name": "a", "rate": "1/s"}], "concurrency": [{"name": "a", "max": 1}]
        })


def test_store_urls_are_checked() -> None:
    base = {"version": 1}
    for good in ("redis://127.0.0.1:6379/0", "rediss://h:6380", "redis+sentinel://h:26379/mymaster",
                 "redis+cluster://h1:7000,h2:7001", "unix:///run/redis.sock"):
        assert GatewayConfig.model_validate({**base, "store": {"redis": good}}).store is not None
    for bad in ("http://127.0.0.1:6379", "127.0.0.1:6379", "redis://"):
        with pytest.raises(ValidationError):
            GatewayConfig.model_validate({**base, "store": {"redis": bad}})
    store = GatewayConfig.model_validate({**base, "store": {}}).store
    assert store is not None and store.timeout == 0.02 and store.on_failure == "open"


# --- keys and headers -----------------------------------------------------------------------------------


def _ctx(headers: list[tuple[bytes, bytes]] | None = None, ip: str = "203.0.113.7") -> RequestContext:
    return RequestContext("GET", "/", b"", headers or [], "h", ip, ip, "http", "1.1")


def test_a_missing_key_value_falls_back_to_the_client_ip_in_a_separate_namespace() -> None:
    key = key_function("per-tenant", "header:X-Tenant", b"x-api-key")
    with_header = key(_ctx([(b"x-tenant", b"ip:203.0.113.7")]))
    without = key(_ctx())
    assert without == b"fg:rl:per-tenant:ip:203.0.113.7"
    assert with_header != without


def test_api_keys_never_reach_the_store_in_clear() -> None:
    key = key_function("k", "api_key", b"x-api-key")
    stored = key(_ctx([(b"x-api-key", b"s3cret-key")]))
    assert b"s3cret" not in stored
    consumer_ctx = _ctx()
    consumer_ctx.consumer = "partner-acme"
    assert key(consumer_ctx) == b"fg:rl:k:c:v:partner-acme"


def test_long_values_are_stored_as_a_digest() -> None:
    key = key_function("k", "header:X-Big", b"x-api-key")
    assert len(key(_ctx([(b"x-big", b"a" * 10_000)]))) < 80


def test_claim_keys_follow_dotted_paths() -> None:
    key = key_function("k", "claim:org.id", b"x-api-key")
    ctx = _ctx()
    ctx.claims = {"org": {"id": 42}}
    assert key(ctx) == b"fg:rl:k:v:42"


def test_headers_list_every_limit_that_applies_to_the_method() -> None:
    gateway = GatewayConfig.model_validate({"version": 1})
    config = RateLimitConfig.model_validate({"limits": [
        {"name": "per-ip", "rate": "100/s", "key": "ip"},
        {"name": "writes", "rate": "60/m", "burst": 10, "key": "ip", "methods": ["POST"]},
    ]})
    plugin = RateLimitPlugin(config, None, BuildContext(gateway, {"frontgate.store": MemoryStore(FakeClock())}))
    post = plugin._by_method["POST"]
    assert post is not None and plugin._other is not None
    assert post.policy == b'"per-ip";q=100;w=1, "writes";q=70;w=60'
    assert plugin._other.policy == b'"per-ip";q=100;w=1'
    verdict = asyncio.run(plugin.store.decide(post.plan, [b"a", b"b"]))
    assert ratelimit_value(post, verdict) == b'"per-ip";r=99;t=1, "writes";r=69;t=1'
