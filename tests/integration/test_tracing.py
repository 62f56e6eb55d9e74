"""Tracing end to end: the gateway exports to a real OTLP/HTTP collector started here (protobuf decoded with
opentelemetry-proto), and the upstream records the traceparent it was sent."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
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
from tests.integration.observability_helpers import OtlpCollector, ReceivedSpan

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")


class FailsFirst:
    """503 on the first request, 200 after."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, request: ReceivedRequest, sock: socket.socket) -> bytes:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        return json_response(503 if first else 200, {"first": first})


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    server = OtlpCollector()
    yield server
    server.close()


def _config(upstream: RecordingUpstream, tracing: dict[str, Any] | None, **routes_extra: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "orders", "match": {"paths": ["/orders"]}, "to": "orders", **routes_extra}
    observability: dict[str, Any] = {"access_log": {"to": "stdout"}}
    if tracing is not None:
        observability["tracing"] = tracing
    return gateway_config(free_port(), free_port(), {"orders": [upstream.url]}, [route], observability=observability)


@pytest.fixture
def traced(tmp_path: Path, upstream: RecordingUpstream, collector: OtlpCollector) -> Iterator[RunningGateway]:
    tracing = {"otlp_endpoint": collector.endpoint, "sample_ratio": 1.0, "service_name": "edge"}
    with run_gateway(tmp_path, _config(upstream, tracing)) as gateway:
        yield gateway


def _by_kind(spans: list[ReceivedSpan], kind: int) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == kind]


def test_server_and_client_spans_continue_the_callers_trace(traced: RunningGateway, upstream: RecordingUpstream,
                                                             collector: OtlpCollector) -> None:
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=abc,other=1",
               "user-agent": "trace-test/1"}
    response = httpx.get(traced.url("/orders/42"), headers=headers)
    assert response.status_code == 200

    spans = collector.wait_for(2)
    (server,) = _by_kind(spans, OtlpCollector.SERVER)
    (client,) = _by_kind(spans, OtlpCollector.CLIENT)
    # One trace: the caller's span -> our server span -> our client span -> the upstream.
    assert server.trace_id == client.trace_id == CALLER_TRACE
    assert server.parent_span_id == CALLER_SPAN
    assert client.parent_span_id == server.span_id
    sent = upstream.requests[-1]
    assert sent.header_values("traceparent") == [f"00-{CALLER_TRACE}-{client.span_id}-01"]
    assert sent.header("tracestate") == "vendor=abc,other=1"
    assert server.trace_state == "vendor=abc,other=1"
    # HTTP semantic conventions.
    assert server.name == "GET /orders/*"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/orders/42"
    assert server.attributes["url.scheme"] == "http"
    assert server.attributes["http.route"] == "/orders/*"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["client.address"] == "127.0.0.1"
    assert server.attributes["user_agent.original"] == "trace-test/1"
    assert server.attributes["frontgate.route"] == "orders"
    assert client.name == "GET"
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["server.port"] == upstream.port
    assert client.attributes["url.full"] == f"{upstream.url}/orders/42"
    assert client.attributes["http.response.status_code"] == 200
    assert "http.request.resend_count" not in client.attributes
    assert server.status_code == client.status_code == 0
    # The client span lies within the server span.
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert server.resource["service.name"] == "edge"
    # The access log names the same trace.
    time.sleep(0.3)
    assert [line["trace_id"] for line in traced.access_log()] == [CALLER_TRACE]


def test_each_retry_is_its_own_client_span(tmp_path: Path, collector: OtlpCollector) -> None:
    upstream = RecordingUpstream(FailsFirst())
    try:
        tracing = {"otlp_endpoint": collector.endpoint, "sample_ratio": 1.0}
        config = _config(upstream, tracing, retry={"attempts": 2, "retry_on": ["5xx"]})
        with run_gateway(tmp_path, config) as gateway:
            assert httpx.get(gateway.url("/orders")).status_code == 200
            spans = collector.wait_for(3)
    finally:
        upstream.close()
    (server,) = _by_kind(spans, OtlpCollector.SERVER)
    clients = sorted(_by_kind(spans, OtlpCollector.CLIENT), key=lambda s: s.start_ns)
    assert len(clients) == 2
    assert all(c.parent_span_id == server.span_id and c.trace_id == server.trace_id for c in clients)
    first, second = clients
    assert first.status_code == 2 and first.attributes["error.type"]
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200
    received = [r.header("traceparent") for r in upstream.requests]
    assert received == [f"00-{server.trace_id}-{first.span_id}-01", f"00-{server.trace_id}-{second.span_id}-01"]
    assert server.parent_span_id == ""  # the gateway started this trace


def test_requests_the_gateway_answers_itself_get_a_server_span(traced: RunningGateway,
                                                               collector: OtlpCollector) -> None:
    assert httpx.get(traced.url("/nowhere")).status_code == 404
    (span,) = collector.wait_for(1)
    assert span.kind == OtlpCollector.SERVER
    assert span.name == "GET"
    assert span.attributes["http.response.status_code"] == 404
    assert "http.route" not in span.attributes
    assert span.status_code == 0  # a 4xx is not a server error


def test_unsampled_requests_are_propagated_and_not_exported(tmp_path: Path, upstream: RecordingUpstream,
                                                            collector: OtlpCollector) -> None:
    tracing = {"otlp_endpoint": collector.endpoint, "sample_ratio": 0.0}
    with run_gateway(tmp_path, _config(upstream, tracing)) as gateway:
        assert httpx.get(gateway.url("/orders")).status_code == 200
        not_sampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
        assert httpx.get(gateway.url("/orders"), headers={"traceparent": not_sampled}).status_code == 200
        time.sleep(1.5)  # longer than the export interval
    assert collector.spans == []
    fresh, continued = (r.header("traceparent") or "" for r in upstream.requests)
    assert TRACEPARENT.match(fresh) and fresh.endswith("-00")
    match = TRACEPARENT.match(continued)
    assert match and match.group(1) == CALLER_TRACE and match.group(2) != CALLER_SPAN and continued.endswith("-00")


def test_a_sampled_caller_is_traced_whatever_the_ratio(tmp_path: Path, upstream: RecordingUpstream,
                                                       collector: OtlpCollector) -> None:
    tracing = {"otlp_endpoint": collector.endpoint, "sample_ratio": 0.0}
    with run_gateway(tmp_path, _config(upstream, tracing)) as gateway:
        headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        assert httpx.get(gateway.url("/orders"), headers=headers).status_code == 200
        spans = collector.wait_for(2)
    assert {s.trace_id for s in spans} == {CALLER_TRACE}


def test_a_malformed_traceparent_starts_a_new_trace(traced: RunningGateway, upstream: RecordingUpstream,
                                                     collector: OtlpCollector) -> None:
    headers = {"traceparent": "00-not-a-valid-header-01", "tracestate": "vendor=abc"}
    assert httpx.get(traced.url("/orders"), headers=headers).status_code == 200
    spans = collector.wait_for(2)
    sent = upstream.requests[-1]
    (value,) = sent.header_values("traceparent")
    assert TRACEPARENT.match(value)
    assert sent.header("tracestate") is None  # it belonged to the broken traceparent
    (server,) = _by_kind(spans, OtlpCollector.SERVER)
    assert server.parent_span_id == "" and value.split("-")[1] == server.trace_id


def test_without_tracing_the_callers_traceparent_passes_through(tmp_path: Path, upstream: RecordingUpstream) -> None:
    with run_gateway(tmp_path, _config(upstream, None)) as gateway:
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        assert httpx.get(gateway.url("/orders"), headers={"traceparent": caller}).status_code == 200
        time.sleep(0.3)
        assert upstream.requests[-1].header_values("traceparent") == [caller]
        assert gateway.access_log()[-1]["trace_id"] == CALLER_TRACE


def test_a_dead_collector_slows_no_request(tmp_path: Path, upstream: RecordingUpstream) -> None:
    tracing = {"otlp_endpoint": f"http://127.0.0.1:{free_port()}", "sample_ratio": 1.0}
    with run_gateway(tmp_path, _config(upstream, tracing)) as gateway, httpx.Client() as client:
        started = time.monotonic()
        for _ in range(50):
            assert client.get(gateway.url("/orders")).status_code == 200
        assert time.monotonic() - started < 10
        time.sleep(1.5)
        assert client.get(gateway.url("/orders")).status_code == 200


def test_a_reload_switches_tracing_on_and_off(tmp_path: Path, upstream: RecordingUpstream,
                                              collector: OtlpCollector) -> None:
    config = _config(upstream, None)
    with run_gateway(tmp_path, config) as gateway, httpx.Client() as client:
        assert client.get(gateway.url("/orders/before")).status_code == 200
        config["observability"]["tracing"] = {"otlp_endpoint": collector.endpoint, "sample_ratio": 1.0}
        gateway.config_path.write_text(json.dumps(config))
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not collector.spans and time.monotonic() < deadline:
            client.get(gateway.url("/orders/traced"))
            time.sleep(0.3)
        assert collector.spans, "tracing did not start after the reload"
        del config["observability"]["tracing"]
        gateway.config_path.write_text(json.dumps(config))
        gateway.process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        exported = len(collector.spans)
        for _ in range(3):
            assert client.get(gateway.url("/orders/after")).status_code == 200
        time.sleep(1.5)  # longer than the export interval
    assert len(collector.spans) == exported
    assert all("/orders/before" not in str(span.attributes) for span in collector.spans)
