"""rate_limit through the real gateway, with the in-process store and with a real Redis on a free port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import http_sfv
import httpx
import pytest

from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    echo,
    free_port,
    gateway_config,
    run_gateway,
)
from tests.integration.redis_helpers import RedisServer


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def roomy(redis: RedisServer, on_failure: str = "closed") -> dict[str, Any]:
    """A store that fails closed after a generous timeout: on a loaded test machine a slow decision must
    show up as a 503, never pass as an admission (on_failure: open) and spoil an exact count."""
    return {"redis": redis.url, "timeout": "1s", "on_failure": on_failure}


def limited_config(upstream: RecordingUpstream, plugin: dict[str, Any], store: dict[str, Any] | None = None,
                   **sections: Any) -> dict[str, Any]:
    route = {"name": "api", "match": {"paths": ["/"]}, "to": "origin", "plugins": {"rate_limit": plugin}}
    extra = dict(sections)
    if store is not None:
        extra["store"] = store
    config = gateway_config(free_port(), free_port(), {"origin": [upstream.url]}, [route], **extra)
    config["observability"] = {"access_log": False}
    return config


def parse_list(value: str) -> list[tuple[str, dict[str, Any]]]:
    """RFC 8941 List of Items, parsed strictly by http-sfv."""
    parsed = http_sfv.List()
    parsed.parse(value.encode("ascii"))
    return [(item.value, dict(item.params)) for item in parsed]


def assert_rate_limit_headers(response: httpx.Response, name: str, quota: int, window: int) -> int:
    assert len(response.headers.get_list("ratelimit-policy")) == 1
    policy = parse_list(response.headers["ratelimit-policy"])
    assert policy == [(name, {"q": quota, "w": window})]
    (item, params), = parse_list(response.headers["ratelimit"])
    assert item == name
    assert set(params) == {"r", "t"} and params["r"] >= 0 and params["t"] >= 0
    return int(params["r"])


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_exactly_n_of_n_plus_k_sequential_requests_are_admitted(
        backend: str, tmp_path: Path, upstream: RecordingUpstream, request: pytest.FixtureRequest) -> None:
    store = roomy(request.getfixturevalue("redis")) if backend == "redis" else None
    config = limited_config(upstream, {"limits": [{"name": "per-ip", "rate": "20/h", "key": "ip"}]}, store)
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        responses = [client.get(f"/items/{i}") for i in range(25)]
    assert [r.status_code for r in responses] == [200] * 20 + [429] * 5
    assert len(upstream.requests) == 20
    remaining = [assert_rate_limit_headers(r, "per-ip", 20, 3600) for r in responses]
    assert remaining[:20] == list(range(19, -1, -1))
    assert remaining[20:] == [0] * 5
    refused = responses[-1]
    assert int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["error"] == "rate_limited" and body["message"] and body["request_id"]
    assert "trailer" not in refused.headers


def test_replicas_and_workers_sharing_redis_admit_at_most_the_limit_in_total(
        tmp_path: Path, upstream: RecordingUpstream, redis: RedisServer) -> None:
    plugin = {"limits": [{"name": "global", "rate": "100/h", "burst": 20, "key": "global"}]}
    capacity = 120
    store = roomy(redis)
    with ExitStack() as stack:
        gateways = []
        for index, workers in enumerate((1, 1, 2)):
            config = limited_config(upstream, plugin, store)
            (tmp_path / f"gw{index}").mkdir()
            gateways.append(stack.enter_context(run_gateway(tmp_path / f"gw{index}", config, workers=workers)))

        def hammer(base_url: str) -> list[int]:
            with httpx.Client(base_url=base_url, timeout=5) as client:
                return [client.get("/x").status_code for _ in range(40)]

        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(hammer, gw.base_url) for gw in gateways for _ in range(4)]
            statuses = [status for future in futures for status in future.result(timeout=60)]
    admitted = statuses.count(200)
    assert len(statuses) == 480 and set(statuses) <= {200, 429, 503}, sorted(set(statuses))
    assert admitted <= capacity
    assert admitted >= 0.9 * capacity
    assert len(upstream.requests) == admitted


def test_each_key_has_its_own_budget(tmp_path: Path, upstream: RecordingUpstream, redis: RedisServer) -> None:
    config = limited_config(upstream, {"limits": [{"name": "per-tenant", "rate": "3/h", "key": "header:X-Tenant"}]},
                            roomy(redis))
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        acme = [client.get("/", headers={"x-tenant": "acme"}).status_code for _ in range(5)]
        globex = [client.get("/", headers={"x-tenant": "globex"}).status_code for _ in range(5)]
    assert acme == [200, 200, 200, 429, 429]
    assert globex == [200, 200, 200, 429, 429]


def test_rotating_x_forwarded_for_from_an_untrusted_peer_does_not_escape_an_ip_limit(
        tmp_path: Path, upstream: RecordingUpstream) -> None:
    config = limited_config(upstream, {"limits": [{"name": "per-ip", "rate": "5/h", "key": "ip"}]})
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        statuses = [client.get("/", headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code for i in range(12)]
    assert statuses == [200] * 5 + [429] * 7


def test_a_trusted_proxy_s_clients_are_limited_one_by_one(tmp_path: Path, upstream: RecordingUpstream) -> None:
    config = limited_config(upstream, {"limits": [{"name": "per-ip", "rate": "2/h", "key": "ip"}]},
                            server={"trusted_proxies": ["127.0.0.0/8"]})
    config["server"]["listen"] = [{"address": f"127.0.0.1:{free_port()}"}]
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        first = [client.get("/", headers={"x-forwarded-for": "198.51.100.1"}).status_code for _ in range(3)]
        second = [client.get("/", headers={"x-forwarded-for": "198.51.100.2"}).status_code for _ in range(3)]
    assert first == [200, 200, 429]
    assert second == [200, 200, 429]


def test_limits_apply_only_to_their_methods(tmp_path: Path, upstream: RecordingUpstream) -> None:
    config = limited_config(upstream, {"limits": [
        {"name": "writes", "rate": "2/h", "key": "ip", "methods": ["POST"]},
    ]})
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        posts = [client.post("/", content=b"x").status_code for _ in range(3)]
        gets = [client.get("/") for _ in range(5)]
    assert posts == [200, 200, 429]
    assert [r.status_code for r in gets] == [200] * 5
    assert "ratelimit" not in gets[0].headers


def _timed_get(client: httpx.Client, path: str = "/") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def test_frozen_redis_with_on_failure_open_serves_fast_without_the_limit_and_resumes_within_a_second(
        tmp_path: Path, upstream: RecordingUpstream, redis: RedisServer) -> None:
    config = limited_config(upstream, {"limits": [{"name": "per-ip", "rate": "1000/h", "key": "ip"}]},
                            {"redis": redis.url, "timeout": "20ms", "on_failure": "open"})
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        assert "ratelimit" in client.get("/").headers
        redis.pause()
        try:
            timed = [_timed_get(client) for _ in range(20)]
        finally:
            redis.resume()
        resumed_at = time.monotonic()
        while "ratelimit" not in client.get("/").headers:
            assert time.monotonic() - resumed_at < 1.0, "limiting did not resume within a second"
            time.sleep(0.02)
    assert all(r.status_code == 200 and "ratelimit" not in r.headers for r, _ in timed)
    assert max(elapsed for _, elapsed in timed) < 0.5
    assert sum(elapsed for _, elapsed in timed) / len(timed) < 0.05  # fast: no request waits on a dead store


def test_frozen_redis_with_on_failure_closed_answers_503_fast_and_never_reaches_the_upstream(
        tmp_path: Path, upstream: RecordingUpstream, redis: RedisServer) -> None:
    config = limited_config(upstream, {"limits": [{"name": "per-ip", "rate": "1000/h", "key": "ip"}]},
                            {"redis": redis.url, "timeout": "20ms", "on_failure": "closed"})
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        assert client.get("/").status_code == 200
        before = len(upstream.requests)
        redis.pause()
        try:
            timed = [_timed_get(client) for _ in range(20)]
            reached = len(upstream.requests) - before
        finally:
            redis.resume()
    assert reached == 0
    for response, elapsed in timed:
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"] == "rate_limit_unavailable"
        assert elapsed < 0.5
    assert sum(elapsed for _, elapsed in timed) / len(timed) < 0.05


def test_a_limit_can_fail_closed_while_the_store_fails_open(
        tmp_path: Path, upstream: RecordingUpstream, redis: RedisServer) -> None:
    config = limited_config(upstream, {"limits": [
        {"name": "reads", "rate": "1000/h", "key": "ip", "methods": ["GET"]},
        {"name": "writes", "rate": "1000/h", "key": "ip", "methods": ["POST"], "on_failure": "closed"},
    ]}, {"redis": redis.url, "on_failure": "open"})
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        assert client.get("/").status_code == 200
        redis.kill()
        time.sleep(0.1)
        assert client.get("/").status_code == 200
        assert client.post("/", content=b"x").status_code == 503


def test_limiting_resumes_within_a_second_after_redis_is_restarted(
        tmp_path: Path, upstream: RecordingUpstream, redis: RedisServer) -> None:
    config = limited_config(upstream, {"limits": [{"name": "per-ip", "rate": "3/h", "key": "ip"}]},
                            roomy(redis, on_failure="open"))
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        assert client.get("/").status_code == 200
        redis.kill()
        assert [client.get("/").status_code for _ in range(5)] == [200] * 5  # open: served, unlimited
        redis.start()
        restarted_at = time.monotonic()
        while "ratelimit" not in client.get("/").headers:
            assert time.monotonic() - restarted_at < 1.0, "limiting did not resume within a second"
            time.sleep(0.02)
        statuses = [client.get("/").status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]  # the restarted Redis lost the count: one was used above


def test_the_gateway_serves_when_redis_is_down_at_start_up(tmp_path: Path, upstream: RecordingUpstream) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = limited_config(upstream, {"limits": [{"name": "per-ip", "rate": "1/h", "key": "ip"}]},
                            {"redis": dead})
    with run_gateway(tmp_path, config) as gw, httpx.Client(base_url=gw.base_url, timeout=5) as client:
        statuses = [client.get("/").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]


def _slow(request: ReceivedRequest, sock: socket.socket) -> bytes | None:
    if request.target.startswith("/slow"):
        time.sleep(1.0)
    return echo(request, sock)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_concurrency_limit_refuses_requests_beyond_max_in_flight_and_frees_slots_when_they_end(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    upstream = RecordingUpstream(_slow)
    store = roomy(request.getfixturevalue("redis")) if backend == "redis" else None
    config = limited_config(upstream, {"concurrency": [{"name": "in-flight", "max": 2, "key": "ip"}]}, store)
    try:
        with run_gateway(tmp_path, config) as gw:
            results: list[int] = []
            lock = threading.Lock()

            def call() -> None:
                status = httpx.get(gw.url("/slow"), timeout=5).status_code
                with lock:
                    results.append(status)

            threads = [threading.Thread(target=call) for _ in range(4)]
            for thread in threads:
                thread.start()
                time.sleep(0.02)
            for thread in threads:
                thread.join(10)
            after = [httpx.get(gw.url("/fast"), timeout=5).status_code for _ in range(3)]
    finally:
        upstream.close()
    assert sorted(results) == [200, 200, 429, 429]
    assert after == [200, 200, 200]


def test_decision_counters_are_kept_per_limit_name() -> None:
    from frontgate.plugins.rate_limit import counters_for, decision_counts

    counters_for("example").admitted += 2
    assert decision_counts()[("example", "admitted")] >= 2
    json.dumps({f"{k[0]}:{k[1]}": v for k, v in decision_counts().items()})
