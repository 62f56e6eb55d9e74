"""Observability pieces without sockets: W3C traceparent rules, bounded labels, adding up workers'
families, percentiles from histograms, the Prometheus text, and what /config redacts."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from frontgate.admin.redact import REDACTED, redact
from frontgate.config.schema import Tracing
from frontgate.observability.families import LATENCY_BOUNDS, FamilySet, quantile, render_prometheus
from frontgate.observability.metrics import method_class, status_class
from frontgate.observability.tracing import Trace, Tracer, _random_lines, incoming_trace_id, parse_traceparent
from frontgate.pipeline.context import RequestContext
from frontgate.server.exchange import Exchange

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_gives_trace_parent_and_flags() -> None:
    assert parse_traceparent(VALID) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
    assert parse_traceparent(b" " + VALID + b" ") is not None  # optional whitespace around a field value


@pytest.mark.parametrize("value", [
    b"",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent
    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
    b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
])
def test_a_malformed_traceparent_is_refused(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_may_carry_more_fields() -> None:
    assert parse_traceparent(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes") is not None


def test_the_access_log_reads_the_trace_id_of_the_request_lines() -> None:
    lines = [b"host: x\r\n", b"traceparent: " + VALID + b"\r\n"]
    assert incoming_trace_id(lines) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert incoming_trace_id([b"host: x\r\n", b"te: trailers\r\n"]) is None


def test_new_traces_get_valid_unsampled_traceparent_lines_with_distinct_ids() -> None:
    lines = _random_lines()
    assert len(lines) % 70 == 0
    cut = [lines[at:at + 70] for at in range(0, len(lines), 70)]
    for line in cut:
        assert line.startswith(b"traceparent: ") and line.endswith(b"\r\n")
        parsed = parse_traceparent(line[13:-2])
        assert parsed is not None and parsed[2] == 0  # valid ids (never all zeros), flag 00
    assert len({line[16:48] for line in cut}) == len(cut)


def _exchange(*lines: bytes) -> Exchange:
    """An exchange with only what the tracer reads (a real one: the compiled build checks the type)."""
    exchange = Exchange.__new__(Exchange)
    exchange.ctx = RequestContext("GET", "/", b"", None, "x", "127.0.0.1", "127.0.0.1", "http", "1.1", list(lines))
    exchange.attempts = 1
    return exchange


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_new_traces_are_sampled_by_the_ratio_and_retries_keep_the_trace(ratio: float) -> None:
    tracer = Tracer(Tracing(otlp_endpoint="http://127.0.0.1:9", sample_ratio=ratio))
    try:
        exchange = _exchange(b"host: x\r\n")
        first = tracer.upstream_traceparent(exchange)
        exchange.attempts = 2
        second = tracer.upstream_traceparent(exchange)
        assert isinstance(exchange.ctx.trace, Trace if ratio else bytes)
        flags = b"-01\r\n" if ratio else b"-00\r\n"
        assert first.endswith(flags) and second.endswith(flags)
        assert first[:49] == second[:49] and first[49:65] != second[49:65]  # same trace, a span per try
    finally:
        tracer.close()


def test_an_unsampled_caller_keeps_its_trace_id_and_gets_our_span_id() -> None:
    tracer = Tracer(Tracing(otlp_endpoint="http://127.0.0.1:9", sample_ratio=1.0))
    try:
        exchange = _exchange(b"host: x\r\n", b"traceparent: " + VALID[:-2] + b"00\r\n")
        line = tracer.upstream_traceparent(exchange)
        assert line.startswith(b"traceparent: " + VALID[:36]) and line.endswith(b"-00\r\n")
        assert line[36:52] != VALID[36:52]
        assert exchange.ctx.header_lines() == [b"host: x\r\n"]  # the caller's own line is not forwarded
    finally:
        tracer.close()


def test_labels_are_folded_into_bounded_classes() -> None:
    assert method_class("GET") == "GET" and method_class("PROPFIND") == "OTHER" and method_class("get") == "OTHER"
    assert [status_class(s) for s in (200, 304, 404, 503, 0, 999)] == ["2xx", "3xx", "4xx", "5xx", "none", "none"]


def _worker(requests: float, healthy: float, breaker: float, buckets: list[float]) -> FamilySet:
    families = FamilySet()
    families.family("frontgate_requests", "counter", "r", ("route",)).add(("a",), requests)
    families.family("frontgate_target_healthy", "gauge", "h", ("target",), agg="min").add(("t",), healthy)
    families.family("frontgate_breaker", "gauge", "b", (), agg="max").add((), breaker)
    families.family("frontgate_d", "histogram", "d", (), bounds=(0.1, 1.0)).add((), buckets)
    return families


def test_workers_add_up_counts_and_combine_states_by_their_rule() -> None:
    total = _worker(3, 1, 0, [1, 2, 0, 0.5])
    total.merge(FamilySet.from_json(_worker(4, 0, 2, [0, 1, 1, 3.0]).to_json()))
    assert total.families["frontgate_requests"].samples == {("a",): 7}
    assert total.families["frontgate_target_healthy"].samples == {("t",): 0}  # unhealthy in one worker
    assert total.families["frontgate_breaker"].samples == {(): 2}  # open in one worker
    assert total.families["frontgate_d"].samples == {(): [1, 3, 1, 3.5]}


def test_a_restarted_worker_carries_counters_but_not_gauges() -> None:
    carried = FamilySet()
    carried.merge(_worker(5, 1, 2, [1, 0, 0, 0.05]), counters_only=True)
    assert "frontgate_requests" in carried.families and "frontgate_d" in carried.families
    assert "frontgate_breaker" not in carried.families


def test_percentiles_interpolate_inside_the_bucket() -> None:
    bounds = (0.1, 0.2, 0.4)
    assert quantile(bounds, [0, 10, 0, 0], 0.5) == pytest.approx(0.15)
    assert quantile(bounds, [10, 0, 0, 0], 0.99) == pytest.approx(0.099)
    assert quantile(bounds, [0, 0, 0, 5], 0.5) == 0.4  # beyond the last bound: the last bound
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None


def test_the_prometheus_text_parses_back_to_the_same_numbers() -> None:
    families = FamilySet()
    families.family("frontgate_requests", "counter", "Requests.", ("route", "status_class")).add(("a", "2xx"), 7)
    buckets = [0.0] * (len(LATENCY_BOUNDS) + 1)
    buckets[2] = 4
    buckets[-1] = 1
    families.family("frontgate_request_duration_seconds", "histogram", "Time.", ("route",),
                    bounds=LATENCY_BOUNDS).add(("a",), [*buckets, 2.5])
    parsed = {f.name: f for f in text_string_to_metric_families(render_prometheus(families).decode())}
    (count,) = parsed["frontgate_requests"].samples
    assert count.name == "frontgate_requests_total" and count.value == 7 and count.labels["status_class"] == "2xx"
    samples = {(s.name, s.labels.get("le")): s.value for s in parsed["frontgate_request_duration_seconds"].samples}
    assert samples[("frontgate_request_duration_seconds_bucket", "0.0025")] == 4
    assert samples[("frontgate_request_duration_seconds_bucket", "+Inf")] == 5
    assert samples[("frontgate_request_duration_seconds_count", None)] == 5
    assert samples[("frontgate_request_duration_seconds_sum", None)] == 2.5


def test_config_secrets_are_redacted_and_the_rest_kept() -> None:
    config = {
        "store": {"redis": "redis://:hunter2@cache:6379/0", "timeout": 0.02},
        "consumers": [{"name": "acme", "api_keys": ["sha256:" + "a" * 64], "groups": ["partners"]}],
        "routes": [{"name": "partners", "plugins": {
            "oauth2_introspection": {"url": "https://idp/introspect", "client_id": "gw", "client_secret": "s3"},
            "api_key": {"header": "X-Api-Key", "hide": True},
            "jwt": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}], "forward_token": True, "issuer": "https://idp/"},
            "rate_limit": {"limits": [{"name": "per-ip", "key": "ip", "rate": "1/s"}]},
            "request_headers": {"set": {"Authorization": "Bearer abc", "X-Partner": "true"}},
        }}],
        "upstreams": {"pay": {"tls": {"cert": "gw.pem", "key": "gw-key.pem", "password": "pw"}}},
    }
    out = redact(config)
    assert out["store"] == {"redis": f"redis://:{REDACTED}@cache:6379/0", "timeout": 0.02}
    assert out["consumers"][0] == {"name": "acme", "api_keys": REDACTED, "groups": ["partners"]}
    plugins = out["routes"][0]["plugins"]
    assert plugins["oauth2_introspection"] == {"url": "https://idp/introspect", "client_id": "gw",
                                              "client_secret": REDACTED}
    assert plugins["api_key"] == {"header": "X-Api-Key", "hide": True}
    assert plugins["jwt"] == {"keys": REDACTED, "forward_token": True, "issuer": "https://idp/"}
    assert plugins["rate_limit"]["limits"][0]["key"] == "ip"
    assert plugins["request_headers"]["set"] == {"Authorization": REDACTED, "X-Partner": "true"}
    assert out["upstreams"]["pay"]["tls"] == {"cert": "gw.pem", "key": REDACTED, "password": REDACTED}
    assert "hunter2" not in repr(out) and "s3" not in repr(out) and "c2VjcmV0" not in repr(out)
