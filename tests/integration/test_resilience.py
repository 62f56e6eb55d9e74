"""Retries, breakers, ejection and health checks against real upstream servers that misbehave on cue."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    json_response,
    run_gateway,
)


def _answer(status: int, name: str) -> Callable[[ReceivedRequest, socket.socket], bytes]:
    return lambda request, sock: json_response(status, {"served_by": name})


class Flaky:
    """Answers `failures` 503s, then 200s."""

    def __init__(self, failures: int) -> None:
        self.left = failures
        self.lock = threading.Lock()

    def __call__(self, request: ReceivedRequest, sock: socket.socket) -> bytes:
        with self.lock:
            self.left -= 1
            failing = self.left >= 0
        return json_response(503 if failing else 200, {"failing": failing})


def _hang(request: ReceivedRequest, sock: socket.socket) -> bytes | None:
    time.sleep(3)
    return json_response(200, {"late": True})


@pytest.fixture
def servers() -> Iterator[list[RecordingUpstream]]:
    started: list[RecordingUpstream] = []
    yield started
    for server in started:
        server.close()


def _start(servers: list[RecordingUpstream], responder: Callable[[ReceivedRequest, socket.socket], Any]
           ) -> RecordingUpstream:
    server = RecordingUpstream(responder)
    servers.append(server)
    return server


def _gateway(tmp_path: Path, upstreams: dict[str, Any], routes: list[dict[str, Any]]) -> Any:
    config = gateway_config(free_port(), free_port(), upstreams={}, routes=routes,
                            observability={"access_log": False})
    config["upstreams"] = upstreams
    return run_gateway(tmp_path, config)


def _status(gw: RunningGateway) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{gw.admin_port}/status", timeout=5).json()  # type: ignore[no-any-return]


def test_refused_target_is_retried_on_another_by_default(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    good = _start(servers, _answer(200, "good"))
    dead = f"http://127.0.0.1:{free_port()}"
    upstreams = {"app": {"targets": [dead, good.url]}}
    with _gateway(tmp_path, upstreams, [{"name": "r", "match": {"paths": ["/"]}, "to": "app"}]) as gw:
        for _ in range(6):
            response = httpx.post(gw.url("/orders"), content=b"{}", timeout=5)  # even POST: nothing was sent
            assert response.status_code == 200
        assert len(good.requests) == 6


def test_5xx_is_retried_up_to_attempts_for_idempotent_requests(
    tmp_path: Path, servers: list[RecordingUpstream]
) -> None:
    flaky = _start(servers, Flaky(failures=2))
    upstreams = {"app": {"targets": [flaky.url]}}
    route = {"name": "r", "match": {"paths": ["/"]}, "to": "app",
             "retry": {"attempts": 3, "retry_on": ["5xx"], "backoff": {"base": "10ms", "max": "20ms"}}}
    with _gateway(tmp_path, upstreams, [route]) as gw:
        response = httpx.get(gw.url("/x"), timeout=5)
        assert response.status_code == 200
        assert len(flaky.requests) == 3
        assert _status(gw)["upstreams"]["app"]["retries"] == 2


def test_exhausted_retries_relay_the_last_upstream_answer(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    broken = _start(servers, _answer(503, "broken"))
    route = {"name": "r", "match": {"paths": ["/"]}, "to": "app",
             "retry": {"attempts": 2, "retry_on": ["gateway-error"], "backoff": {"base": "10ms"}}}
    with _gateway(tmp_path, {"app": {"targets": [broken.url]}}, [route]) as gw:
        response = httpx.get(gw.url("/x"), timeout=5)
        assert response.status_code == 503
        assert response.json() == {"served_by": "broken"}
        assert len(broken.requests) == 2


def test_post_is_not_retried_unless_it_carries_an_idempotency_key(
    tmp_path: Path, servers: list[RecordingUpstream]
) -> None:
    broken = _start(servers, _answer(503, "broken"))
    route = {"name": "r", "match": {"paths": ["/"]}, "to": "app",
             "retry": {"attempts": 3, "retry_on": ["5xx"], "backoff": {"base": "5ms"}}}
    with _gateway(tmp_path, {"app": {"targets": [broken.url]}}, [route]) as gw:
        assert httpx.post(gw.url("/pay"), content=b'{"amount": 1}', timeout=5).status_code == 503
        assert len(broken.requests) == 1
        keyed = httpx.post(gw.url("/pay"), content=b'{"amount": 1}', headers={"idempotency-key": "k1"}, timeout=5)
        assert keyed.status_code == 503
        assert len(broken.requests) == 4
        assert all(r.body == b'{"amount": 1}' for r in broken.requests[1:])


def test_per_try_timeout_moves_on_to_the_next_target(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    slow = _start(servers, _hang)
    fast = _start(servers, _answer(200, "fast"))
    upstreams = {"app": {"targets": [slow.url, fast.url]}}
    route = {"name": "r", "match": {"paths": ["/"]}, "to": "app", "timeout": "2s",
             "retry": {"attempts": 2, "retry_on": ["timeout"], "per_try_timeout": "300ms"}}
    with _gateway(tmp_path, upstreams, [route]) as gw:
        for _ in range(4):
            started = time.monotonic()
            response = httpx.get(gw.url("/x"), timeout=5)
            assert response.status_code == 200
            assert response.json() == {"served_by": "fast"}
            assert time.monotonic() - started < 1.5


def test_route_timeout_bounds_all_retries(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    slow = _start(servers, _hang)
    route = {"name": "r", "match": {"paths": ["/"]}, "to": "app", "timeout": "800ms",
             "retry": {"attempts": 5, "retry_on": ["timeout"], "per_try_timeout": "300ms"}}
    with _gateway(tmp_path, {"app": {"targets": [slow.url]}}, [route]) as gw:
        started = time.monotonic()
        response = httpx.get(gw.url("/x"), timeout=5)
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert 0.7 < elapsed < 1.6
        assert len(slow.requests) <= 3


def test_max_in_flight_fails_fast_with_503(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    slow = _start(servers, lambda r, s: (time.sleep(1), json_response(200, {}))[1])
    upstreams = {"app": {"targets": [slow.url], "circuit_breaker": {"max_in_flight": 2}}}
    with _gateway(tmp_path, upstreams, [{"name": "r", "match": {"paths": ["/"]}, "to": "app"}]) as gw:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(httpx.get(gw.url("/x"), timeout=5).status_code))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        rejected = httpx.get(gw.url("/x"), timeout=5)
        assert rejected.status_code == 503
        assert rejected.json()["error"] == "circuit_open"
        assert time.monotonic() - started < 0.3
        for thread in threads:
            thread.join(5)
        assert results == [200, 200]


def test_error_ratio_opens_the_breaker_then_a_probe_closes_it(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    flaky = _start(servers, Flaky(failures=10))
    upstreams = {"app": {"targets": [flaky.url], "circuit_breaker": {
        "error_ratio": 0.5, "min_requests": 10, "window": "10s", "open_for": "1s"}}}
    with _gateway(tmp_path, upstreams, [{"name": "r", "match": {"paths": ["/"]}, "to": "app"}]) as gw:
        statuses = [httpx.get(gw.url("/x"), timeout=5).status_code for _ in range(10)]
        assert statuses == [503] * 10
        rejected = httpx.get(gw.url("/x"), timeout=5)
        assert rejected.json()["error"] == "circuit_open"
        assert len(flaky.requests) == 10  # open: the upstream is not touched
        time.sleep(1.1)
        assert httpx.get(gw.url("/x"), timeout=5).status_code == 200  # the half-open probe succeeds
        assert httpx.get(gw.url("/x"), timeout=5).status_code == 200
        assert _status(gw)["upstreams"]["app"]["breaker"] == "closed"


def test_failing_target_is_ejected_and_comes_back(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    bad = _start(servers, _answer(500, "bad"))
    good = _start(servers, _answer(200, "good"))
    upstreams = {"app": {"targets": [bad.url, good.url],
                         "outlier": {"consecutive_failures": 3, "eject_for": "2s", "max_ejected": "50%"}}}
    with _gateway(tmp_path, upstreams, [{"name": "r", "match": {"paths": ["/"]}, "to": "app"}]) as gw, \
            httpx.Client(timeout=5) as client:
        for _ in range(6):
            client.get(gw.url("/x"))
        assert len(bad.requests) == 3
        served = [client.get(gw.url("/x")).json()["served_by"] for _ in range(10)]
        assert served == ["good"] * 10
        targets = _status(gw)["upstreams"]["app"]["targets"]
        assert targets[0]["ejected"] and not targets[1]["ejected"]
        time.sleep(2.1)
        served = [client.get(gw.url("/x")).json()["served_by"] for _ in range(4)]
        assert "bad" in served  # back after the ejection time, and probed by real traffic


def test_active_health_checks_take_a_target_out_and_put_it_back(
    tmp_path: Path, servers: list[RecordingUpstream]
) -> None:
    healthy = {"ok": True}

    def sick(request: ReceivedRequest, sock: socket.socket) -> bytes:
        if request.target == "/healthz":
            return json_response(200 if healthy["ok"] else 503, {})
        return json_response(200, {"served_by": "sick"})

    first = _start(servers, sick)
    second = _start(servers, _answer(200, "steady"))
    check = {"path": "/healthz", "interval": "100ms", "timeout": "500ms", "unhealthy_after": 2, "healthy_after": 2}
    upstreams = {"app": {"targets": [first.url, second.url], "health_check": check}}
    with _gateway(tmp_path, upstreams, [{"name": "r", "match": {"paths": ["/"]}, "to": "app"}]) as gw:
        healthy["ok"] = False
        time.sleep(0.6)
        served = {httpx.get(gw.url("/x"), timeout=5).json()["served_by"] for _ in range(10)}
        assert served == {"steady"}
        assert _status(gw)["upstreams"]["app"]["targets"][0]["healthy"] is False
        healthy["ok"] = True
        time.sleep(0.6)
        served = {httpx.get(gw.url("/x"), timeout=5).json()["served_by"] for _ in range(10)}
        assert served == {"sick", "steady"}


def test_hash_balancing_keeps_a_key_on_one_target(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    a = _start(servers, _answer(200, "a"))
    b = _start(servers, _answer(200, "b"))
    c = _start(servers, _answer(200, "c"))
    upstreams = {"app": {"targets": [a.url, b.url, c.url], "balance": "hash", "hash_on": "header:x-user"}}
    with _gateway(tmp_path, upstreams, [{"name": "r", "match": {"paths": ["/"]}, "to": "app"}]) as gw:
        for user in ("alice", "bob", "carol", "dave"):
            served = {httpx.get(gw.url("/x"), headers={"x-user": user}, timeout=5).json()["served_by"]
                      for _ in range(5)}
            assert len(served) == 1


def test_upstream_is_told_its_deadline_and_clients_cannot_set_it(
    tmp_path: Path, servers: list[RecordingUpstream]
) -> None:
    echo = _start(servers, lambda r, s: json_response(200, {"deadline": r.header("x-request-deadline")}))
    route = {"name": "r", "match": {"paths": ["/"]}, "to": "app", "timeout": "2s"}
    with _gateway(tmp_path, {"app": {"targets": [echo.url]}}, [route]) as gw:
        response = httpx.get(gw.url("/x"), headers={"x-request-deadline": "999999"}, timeout=5)
        deadline = int(response.json()["deadline"])
        assert 1500 < deadline <= 2000
        assert len(echo.requests[0].header_values("x-request-deadline")) == 1


def test_retry_budget_limits_retries_under_a_storm(tmp_path: Path, servers: list[RecordingUpstream]) -> None:
    def slow_fail(request: ReceivedRequest, sock: socket.socket) -> bytes:
        time.sleep(0.3)
        return json_response(503, {})

    broken = _start(servers, slow_fail)
    route = {"name": "r", "match": {"paths": ["/"]}, "to": "app",
             "retry": {"attempts": 3, "retry_on": ["5xx"], "budget": "10%", "min_retry_concurrency": 1,
                       "backoff": {"base": "5ms"}}}
    with _gateway(tmp_path, {"app": {"targets": [broken.url]}}, [route]) as gw:
        threads = [threading.Thread(target=lambda: httpx.get(gw.url("/x"), timeout=10)) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        # Without a budget 10 requests x 3 attempts = 30; 10% of 10 in flight allows one retry at a time.
        assert len(broken.requests) < 20
        assert _status(gw)["upstreams"]["app"]["retry_budget_exhausted"] > 0


def test_a_target_that_resets_is_retried_elsewhere_when_reset_is_listed(
    tmp_path: Path, servers: list[RecordingUpstream]
) -> None:
    resetting = _start(servers, lambda r, s: None)  # reads the request, then closes without answering
    good = _start(servers, _answer(200, "good"))
    route = {"name": "r", "match": {"paths": ["/"]}, "to": "app",
             "retry": {"attempts": 2, "retry_on": ["reset"], "backoff": {"base": "5ms"}}}
    with _gateway(tmp_path, {"app": {"targets": [resetting.url, good.url]}}, [route]) as gw, \
            httpx.Client(timeout=5) as client:
        served = [client.get(gw.url("/x")).json()["served_by"] for _ in range(6)]
        assert served == ["good"] * 6
        assert len(resetting.requests) >= 1
