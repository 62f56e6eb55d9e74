"""The access log: the fields of docs/access-log.md, to stdout or a file, reopened on SIGUSR1 for rotation."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    json_response,
    run_gateway,
)
from tests.integration.observability_helpers import scrape, wait_until

FIELDS = ["time", "request_id", "trace_id", "client_ip", "consumer", "method", "host", "path", "route", "upstream",
          "target", "upstream_us", "status", "grpc_status", "bytes_in", "bytes_out", "duration_us", "retries", "cache",
          "auth_failure", "rate_limit"]


def _config(upstream: RecordingUpstream, access_log: Any, **extra: Any) -> dict[str, Any]:
    routes = [
        {"name": "orders", "match": {"paths": ["/orders"]}, "to": "orders", **extra},
        {"name": "limited", "match": {"paths": ["/limited"]}, "to": "orders",
         "plugins": {"rate_limit": {"limits": [{"name": "per-ip", "rate": "1/m", "key": "ip"}]}}},
    ]
    return gateway_config(free_port(), free_port(), {"orders": [upstream.url]}, routes,
                          plugins={"request_id": {"header": "X-Request-Id"}},
                          observability={"access_log": access_log})


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _stdout_lines(gateway: RunningGateway, count: int) -> list[dict[str, Any]]:
    wait_until(lambda: len(gateway.access_log()) >= count, timeout=5)
    return gateway.access_log()


def test_a_proxied_request_logs_every_field(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with run_gateway(tmp_path, _config(upstream, {"to": "stdout"})) as gateway:
        response = httpx.post(gateway.url("/orders/7"), content=b"x" * 123,
                              headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        assert response.status_code == 200
        (line,) = _stdout_lines(gateway, 1)
    assert list(line) == FIELDS
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["client_ip"] == "127.0.0.1" and line["consumer"] is None
    assert (line["method"], line["host"], line["path"]) == ("POST", "127.0.0.1", "/orders/7")
    assert (line["route"], line["upstream"], line["target"]) == ("orders", "orders", upstream.url)
    assert (line["status"], line["bytes_in"], line["bytes_out"]) == (200, 123, len(response.content))
    assert 0 < line["upstream_us"] <= line["duration_us"] < 10_000_000
    assert line["retries"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert abs(time.time() - time.mktime(time.strptime(line["time"][:19], "%Y-%m-%dT%H:%M:%S")) + time.timezone) < 60


def test_an_unrouted_request_has_no_route_and_no_upstream(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with run_gateway(tmp_path, _config(upstream, {"to": "stdout"})) as gateway:
        assert httpx.get(gateway.url("/nowhere?secret=1")).status_code == 404
        (line,) = _stdout_lines(gateway, 1)
    assert line["status"] == 404 and line["path"] == "/nowhere"
    assert line["route"] is None and line["upstream"] is None and line["target"] is None
    assert line["upstream_us"] is None and line["trace_id"] is None


def test_retries_and_limit_outcomes_are_logged(tmp_path: Path) -> None:
    calls = []

    def fails_first(request: ReceivedRequest, sock: socket.socket) -> bytes:
        calls.append(request)
        return json_response(503 if len(calls) == 1 else 200, {})

    upstream = RecordingUpstream(fails_first)
    try:
        config = _config(upstream, {"to": "stdout"}, retry={"attempts": 2, "retry_on": ["5xx"]})
        with run_gateway(tmp_path, config) as gateway, httpx.Client(base_url=gateway.base_url) as client:
            assert client.get("/orders").status_code == 200
            assert client.get("/limited").status_code == 200
            assert client.get("/limited").status_code == 429
            lines = _stdout_lines(gateway, 3)
    finally:
        upstream.close()
    retried, admitted, refused = lines
    assert retried["retries"] == 1 and retried["status"] == 200
    assert admitted["rate_limit"] == "ok"
    assert refused["rate_limit"] == "limited:per-ip" and refused["status"] == 429 and refused["upstream"] is None


def test_a_log_file_is_reopened_after_rotation_on_sigusr1(tmp_path: Path, upstream: RecordingUpstream) -> None:
    log = tmp_path / "access.log"
    with run_gateway(tmp_path, _config(upstream, {"to": str(log)})) as gateway, httpx.Client() as client:
        for i in range(3):
            assert client.get(gateway.url(f"/orders/before-{i}")).status_code == 200
        assert wait_until(lambda: len(_lines(log)) == 3)
        rotated = tmp_path / "access.log.1"
        log.rename(rotated)  # what logrotate does, before it signals
        gateway.process.send_signal(signal.SIGUSR1)
        assert wait_until(lambda: log.exists())
        for i in range(2):
            assert client.get(gateway.url(f"/orders/after-{i}")).status_code == 200
        assert wait_until(lambda: len(_lines(log)) == 2)
    assert [line["path"] for line in _lines(rotated)] == [f"/orders/before-{i}" for i in range(3)]
    assert [line["path"] for line in _lines(log)] == [f"/orders/after-{i}" for i in range(2)]


def test_with_two_workers_sigusr1_reopens_the_file_in_each(tmp_path: Path, upstream: RecordingUpstream) -> None:
    log = tmp_path / "access.log"
    with run_gateway(tmp_path, _config(upstream, {"to": str(log)}), workers=2) as gateway:
        # Both workers up (each reports its numbers once it handles signals), then rotate.
        assert wait_until(lambda: scrape(gateway).value("frontgate_workers") == 2)
        log.rename(tmp_path / "access.log.1")
        gateway.process.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        for i in range(40):  # new connections: both workers serve some
            assert httpx.get(gateway.url(f"/orders/{i}"), headers={"connection": "close"}).status_code == 200
        assert wait_until(lambda: len(_lines(log)) == 40)
        assert _lines(tmp_path / "access.log.1") == []


def test_switched_off_it_writes_nothing(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with run_gateway(tmp_path, _config(upstream, False)) as gateway:
        assert httpx.get(gateway.url("/orders")).status_code == 200
        time.sleep(0.4)
        assert gateway.access_log() == []


def test_a_reload_applies_new_access_log_settings(tmp_path: Path, upstream: RecordingUpstream) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    config = _config(upstream, False)
    with run_gateway(tmp_path, config) as gateway, httpx.Client() as client:
        assert client.get(gateway.url("/orders/unlogged")).status_code == 200
        for target, path in ((first, "/orders/to-first"), (second, "/orders/to-second")):
            config["observability"] = {"access_log": {"to": str(target)}}
            gateway.config_path.write_text(json.dumps(config))
            gateway.process.send_signal(signal.SIGHUP)
            assert wait_until(lambda target=target: _reloaded_to(client, gateway, target), timeout=10)
            assert client.get(gateway.url(path)).status_code == 200
            assert wait_until(lambda target=target, path=path: path in [x["path"] for x in _lines(target)])
    assert all(line["path"] != "/orders/unlogged" for line in _lines(first) + _lines(second))
    assert "/orders/to-second" not in [line["path"] for line in _lines(first)]


def _reloaded_to(client: httpx.Client, gateway: RunningGateway, target: Path) -> bool:
    """Probe until a request lands in `target` (the reload happened); probes are not counted as test paths."""
    client.get(gateway.url("/orders/probe"))
    time.sleep(0.15)
    return any(line["path"] == "/orders/probe" for line in _lines(target))
