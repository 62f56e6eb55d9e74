"""/metrics on the admin listener, read the way Prometheus reads it (prometheus_client's text parser)."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
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
from tests.integration.observability_helpers import admin_get, scrape, wait_until

KEY = "metrics-test-key"
KEY_HASH = "sha256:" + __import__("hashlib").sha256(KEY.encode()).hexdigest()


def _fail(request: ReceivedRequest, sock: socket.socket) -> bytes:
    return json_response(500, {"broken": True})


@pytest.fixture
def broken() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(_fail)
    yield server
    server.close()


def _config(upstream: RecordingUpstream, broken: RecordingUpstream, **sections: Any) -> dict[str, Any]:
    routes = [
        {"name": "orders", "match": {"paths": ["/orders"]}, "to": "orders"},
        {"name": "broken", "match": {"paths": ["/broken"]}, "to": "broken"},
        {"name": "keyed", "match": {"paths": ["/keyed"]}, "to": "orders",
         "plugins": {"api_key": {"header": "X-Api-Key"}}},
        {"name": "limited", "match": {"paths": ["/limited"]}, "to": "orders",
         "plugins": {"rate_limit": {"limits": [{"name": "tiny", "rate": "2/m", "key": "ip"}]}}},
    ]
    sections.setdefault("observability", {"access_log": False})
    return gateway_config(free_port(), free_port(), {"orders": [upstream.url], "broken": [broken.url]}, routes,
                          consumers=[{"name": "partner", "api_keys": [KEY_HASH]}], **sections)


@pytest.fixture
def gateway(tmp_path: Path, upstream: RecordingUpstream, broken: RecordingUpstream) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path, _config(upstream, broken)) as running:
        yield running


def test_request_counts_and_latency_histograms_move_with_traffic(gateway: RunningGateway) -> None:
    before = scrape(gateway)
    with httpx.Client(base_url=gateway.base_url) as client:
        for i in range(7):
            assert client.get(f"/orders/{i}").status_code == 200
        for _ in range(3):
            assert client.post("/orders", content=b"x" * 100).status_code == 200
        assert client.get("/broken").status_code == 500
    after = scrape(gateway)
    assert after.types["frontgate_requests"] == "counter"
    assert after.types["frontgate_request_duration_seconds"] == "histogram"

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    ok = {"route": "orders", "status_class": "2xx", "upstream": "orders"}
    assert grew("frontgate_requests_total", method="GET", **ok) == 7
    assert grew("frontgate_requests_total", method="POST", **ok) == 3
    assert grew("frontgate_request_duration_seconds_count", method="GET", **ok) == 7
    assert grew("frontgate_request_duration_seconds_bucket", method="GET", le="+Inf", **ok) == 7
    assert 0 < grew("frontgate_request_duration_seconds_sum", method="GET", **ok) < 7 * 5
    assert grew("frontgate_request_body_bytes_total", route="orders") == 300
    assert grew("frontgate_requests_total", route="broken", status_class="5xx") == 1
    assert grew("frontgate_upstream_attempts_total", upstream="orders", outcome="ok") == 10
    assert grew("frontgate_upstream_attempts_total", upstream="broken", outcome="error") == 1
    assert grew("frontgate_upstream_attempt_duration_seconds_count", upstream="orders") == 10
    assert after.value("frontgate_target_healthy", upstream="orders") == 1
    assert after.value("frontgate_upstream_breaker_state", upstream="orders") == 0
    assert after.value("frontgate_config_generation") == 1
    assert after.value("frontgate_workers") == 1


def test_five_hundred_unknown_paths_add_no_series(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.base_url) as client:
        assert client.get("/nowhere/warm-up").status_code == 404
        before = scrape(gateway)
        for i in range(500):
            assert client.get(f"/nowhere/{i}-unique-path").status_code == 404
    after = scrape(gateway)
    assert after.series() == before.series()
    routes = {"(none)", "orders", "broken", "keyed", "limited"}
    assert after.label_values("frontgate_requests_total", "route") <= routes
    unrouted = "frontgate_requests_total"
    assert after.value(unrouted, route="(none)") - before.value(unrouted, route="(none)") == 500
    assert "unique-path" not in after.text


def test_unusual_methods_and_statuses_fold_into_bounded_classes(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.base_url) as client:
        for method in ("PROPFIND", "MKCOL", "LOCK", "GET"):
            client.request(method, "/orders/x")
    methods = scrape(gateway).label_values("frontgate_requests_total", "method")
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER"}
    assert "OTHER" in methods


def test_rate_limit_decisions_and_auth_failures_are_counted(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.base_url) as client:
        statuses = [client.get("/limited").status_code for _ in range(5)]
        assert statuses.count(429) == 3
        assert client.get("/keyed").status_code == 401
        assert client.get("/keyed", headers={"X-Api-Key": "wrong"}).status_code == 401
        assert client.get("/keyed", headers={"X-Api-Key": KEY}).status_code == 200
    metrics = scrape(gateway)
    assert metrics.value("frontgate_rate_limit_decisions_total", limit="tiny", outcome="limited") == 3
    assert metrics.value("frontgate_rate_limit_decisions_total", limit="tiny", outcome="admitted") == 2
    assert metrics.value("frontgate_auth_failures_total", plugin="api_key") == 2
    assert len(metrics.label_values("frontgate_auth_failures_total", "reason")) == 2
    assert metrics.value("frontgate_requests_total", route="limited", status_class="4xx", upstream="(none)") == 3


def test_reloads_are_counted_by_outcome(gateway: RunningGateway) -> None:
    config = json.loads(gateway.config_path.read_text())
    config["routes"].append({"name": "extra", "match": {"paths": ["/extra"]}, "to": "orders"})
    gateway.config_path.write_text(json.dumps(config))
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: scrape(gateway).value("frontgate_config_generation") == 2)
    gateway.config_path.write_text("version: 1\nroutes: [{name: bad}]\n")
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: scrape(gateway).value("frontgate_config_reloads_total", outcome="failed") == 1)
    metrics = scrape(gateway)
    assert metrics.value("frontgate_config_reloads_total", outcome="ok") == 1
    assert metrics.value("frontgate_config_generation") == 2


def test_a_dead_target_shows_unhealthy(tmp_path: Path, upstream: RecordingUpstream) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = gateway_config(free_port(), free_port(), {"pair": [upstream.url, dead]},
                            [{"name": "pair", "match": {"paths": ["/"]}, "to": "pair"}],
                            observability={"access_log": False})
    config["upstreams"]["pair"]["health_check"] = {"path": "/", "interval": "100ms", "unhealthy_after": 1}
    with run_gateway(tmp_path, config) as gateway:
        assert wait_until(lambda: scrape(gateway).value("frontgate_target_healthy", target=dead) == 0
                          and scrape(gateway).value("frontgate_target_healthy", target=upstream.url) == 1)


def test_metrics_can_be_switched_off(tmp_path: Path, upstream: RecordingUpstream) -> None:
    config = gateway_config(free_port(), free_port(), {"origin": [upstream.url]},
                            [{"name": "all", "match": {"paths": ["/"]}, "to": "origin"}],
                            observability={"access_log": False, "metrics": {"prometheus": False}})
    with run_gateway(tmp_path, config) as gateway:
        assert admin_get(gateway, "/metrics")[0] == 404
        assert admin_get(gateway, "/dashboard")[0] == 404
        assert admin_get(gateway, "/status")[0] == 200


def test_with_two_workers_metrics_are_the_sum_of_both(tmp_path: Path, upstream: RecordingUpstream,
                                                        broken: RecordingUpstream) -> None:
    with run_gateway(tmp_path, _config(upstream, broken), workers=2) as gateway:
        wait_until(lambda: scrape(gateway).value("frontgate_workers") == 2)
        for i in range(200):
            # A new connection each time: the kernel spreads connections over both workers' sockets.
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
                sock.sendall(f"GET /orders/{i} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
                assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 200")

        def total() -> float:
            return scrape(gateway).value("frontgate_requests_total", route="orders")

        assert wait_until(lambda: total() == 200, timeout=10), total()
        metrics = scrape(gateway)
        assert metrics.value("frontgate_workers") == 2
        assert metrics.value("frontgate_upstream_attempts_total", upstream="orders", outcome="ok") == 200
        status = json.loads(admin_get(gateway, "/status")[2])
        assert 0 < status["requests"] < 200, "worker 0 alone served all or nothing: the test shows no sum"
