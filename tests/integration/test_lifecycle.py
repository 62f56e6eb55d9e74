"""Start, reload, drain and workers, as an operator runs them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    free_port,
    gateway_config,
    json_response,
    run_gateway,
)


def _slow_responder(request: ReceivedRequest, sock: socket.socket) -> bytes:
    if request.target.startswith("/slow"):
        time.sleep(1.0)
    return json_response(200, {"target": request.target})


def _config(upstream: RecordingUpstream, **extra: Any) -> dict[str, Any]:
    return gateway_config(
        free_port(), free_port(), upstreams={"origin": [upstream.url]},
        routes=[{"name": "all", "match": {"paths": ["/"]}, "to": "origin"}],
        observability={"access_log": False}, **extra,
    )


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(tmp_path: Path) -> None:
    upstream = RecordingUpstream(_slow_responder)
    try:
        with run_gateway(tmp_path, _config(upstream)) as gw:
            result: dict[str, Any] = {}

            def slow_request() -> None:
                result["response"] = httpx.get(gw.url("/slow"), timeout=10)

            thread = threading.Thread(target=slow_request)
            thread.start()
            time.sleep(0.3)
            gw.process.send_signal(signal.SIGTERM)
            thread.join(10)
            assert result["response"].status_code == 200
            assert gw.process.wait(10) == 0
    finally:
        upstream.close()


def test_sigterm_with_nothing_in_flight_exits_quickly(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with run_gateway(tmp_path, _config(upstream)) as gw:
        assert httpx.get(gw.url("/x"), timeout=5).status_code == 200
        started = time.monotonic()
        assert gw.stop() == 0
        assert time.monotonic() - started < 3


def _rewrite_config(gw_config_path: Path, config: dict[str, Any]) -> None:
    gw_config_path.write_text(json.dumps(config))


def test_sighup_reload_swaps_routes_and_a_bad_file_keeps_the_old_config(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    config = _config(upstream)
    with run_gateway(tmp_path, config) as gw:
        assert httpx.get(gw.url("/new/x"), timeout=5).json()["target"] == "/new/x"
        config["routes"][0]["plugins"] = {"rewrite": {"prefix": "/v2"}}
        _rewrite_config(gw.config_path, config)
        gw.process.send_signal(signal.SIGHUP)
        _wait_until(lambda: httpx.get(gw.url("/a"), timeout=5).json()["target"] == "/v2/a")
        status = httpx.get(f"http://127.0.0.1:{gw.admin_port}/status", timeout=5).json()
        assert status["generation"] == 2

        gw.config_path.write_text("version: 1\nroutes: [{name: broken, match: {paths: [/]}, to: nowhere}]\n")
        gw.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert httpx.get(gw.url("/a"), timeout=5).json()["target"] == "/v2/a"
        assert "unknown upstream 'nowhere'" in gw.logs()
        assert gw.process.poll() is None


def test_reload_command_validates_first_and_signals_the_gateway(tmp_path: Path, upstream: RecordingUpstream) -> None:
    config = _config(upstream)
    config["server"]["pid_file"] = str(tmp_path / "gw.pid")
    with run_gateway(tmp_path, config) as gw:
        _wait_until(lambda: (tmp_path / "gw.pid").exists())
        config["routes"][0]["plugins"] = {"rewrite": {"prefix": "/v3"}}
        _rewrite_config(gw.config_path, config)
        done = _frontgate("reload", "-c", str(gw.config_path))
        assert done.returncode == 0, done.stderr
        _wait_until(lambda: httpx.get(gw.url("/a"), timeout=5).json()["target"] == "/v3/a")

        gw.config_path.write_text(json.dumps({**config, "routes": [{"name": "x", "match": {}, "to": "origin"}]}))
        refused = _frontgate("reload", "-c", str(gw.config_path))
        assert refused.returncode == 1
        assert "routes[0].match" in refused.stderr


def test_reload_under_load_fails_no_request(tmp_path: Path, upstream: RecordingUpstream) -> None:
    config = _config(upstream)
    with run_gateway(tmp_path, config) as gw:
        failures: list[str] = []
        count = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal count
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    try:
                        response = client.get(gw.url("/load"))
                        if response.status_code != 200:
                            failures.append(str(response.status_code))
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    count += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        for generation in range(5):
            time.sleep(0.3)
            config["routes"][0]["timeout"] = f"{10 + generation}s"
            _rewrite_config(gw.config_path, config)
            gw.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert count > 100
        assert failures == []
        status = httpx.get(f"http://127.0.0.1:{gw.admin_port}/status", timeout=5).json()
        assert status["generation"] == 6


def test_in_flight_request_finishes_on_the_config_it_started_with(tmp_path: Path) -> None:
    upstream = RecordingUpstream(_slow_responder)
    try:
        config = _config(upstream)
        with run_gateway(tmp_path, config) as gw:
            result: dict[str, Any] = {}
            thread = threading.Thread(target=lambda: result.update(r=httpx.get(gw.url("/slow"), timeout=10)))
            thread.start()
            time.sleep(0.3)
            config["upstreams"] = {"other": {"targets": [f"http://127.0.0.1:{free_port()}"]}}
            config["routes"][0]["to"] = "other"
            _rewrite_config(gw.config_path, config)
            gw.process.send_signal(signal.SIGHUP)
            thread.join(10)
            assert result["r"].status_code == 200
            assert result["r"].json()["target"] == "/slow"
            # New requests use the new generation, whose upstream does not listen.
            _wait_until(lambda: httpx.get(gw.url("/x"), timeout=5).status_code == 502)
    finally:
        upstream.close()


def test_two_workers_share_the_port_and_drain(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with run_gateway(tmp_path, _config(upstream), workers=2) as gw:
        pids = set()
        for _ in range(40):
            with httpx.Client(timeout=5) as client:  # new connection each time, spread by the kernel
                assert client.get(gw.url("/w")).status_code == 200
        children = subprocess.run(["pgrep", "-P", str(gw.process.pid)], capture_output=True, text=True)
        pids = {int(p) for p in children.stdout.split()}
        assert len(pids) == 2
        assert gw.stop() == 0


def test_admin_endpoints(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with run_gateway(tmp_path, _config(upstream)) as gw:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        assert httpx.get(admin + "/healthz", timeout=5).json() == {"status": "ok"}
        assert httpx.get(admin + "/readyz", timeout=5).status_code == 200
        status = httpx.get(admin + "/status", timeout=5).json()
        assert status["routes"] == ["all"]
        assert status["upstreams"]["origin"]["targets"][0]["url"] == upstream.url
        # The admin API is not on the public port.
        assert httpx.get(gw.url("/healthz"), timeout=5).json()["target"] == "/healthz"


def _frontgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontgate", *args], capture_output=True, text=True, timeout=30)


def _wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")
