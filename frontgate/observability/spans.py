"""Finished requests -> OpenTelemetry spans, in the export thread, after the OpenTelemetry HTTP semantic
conventions (stable HTTP attributes: `http.request.method`, `url.*`, `server.*`, `client.address`,
`http.response.status_code`, `http.route`, `error.type`, `http.request.resend_count`).

The server span is the request as the client saw it: from its head to the end of the response. Each try
sent upstream is a client span under it, from choosing the target (connecting included) to the end of the
target's response or failure. The `traceparent` the upstream received names that client span.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from frontgate.observability.tracing import method_label

if TYPE_CHECKING:
    from frontgate.observability.tracing import SpanExporter, _Finished


def _trace_state(raw: str | None) -> TraceState:
    if not raw:
        return TraceState()
    pairs = []
    for member in raw.split(","):
        key, sep, value = member.strip().partition("=")
        if sep and key:
            pairs.append((key, value))
    try:
        return TraceState(pairs[:32])
    except ValueError:
        return TraceState()


def to_spans(done: _Finished, exporter: SpanExporter) -> list[ReadableSpan]:
    trace = done.trace
    flags = TraceFlags(TraceFlags.SAMPLED)
    state = _trace_state(trace.tracestate)
    server = SpanContext(trace.trace_id, trace.span_id, is_remote=False, trace_flags=flags, trace_state=state)
    parent = (SpanContext(trace.trace_id, trace.parent_id, is_remote=True, trace_flags=flags, trace_state=state)
              if trace.parent_id else None)
    name_method, method = method_label(done.method)
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "url.path": done.path,
        "url.scheme": done.scheme,
        "client.address": done.client_ip,
        "network.peer.address": done.peer_ip,
        "network.protocol.name": "http",
        "network.protocol.version": done.http_version,
        "frontgate.request_id": done.request_id,
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = done.method
    if done.host:
        attributes["server.address"] = done.host
    if done.user_agent is not None:
        attributes["user_agent.original"] = done.user_agent
    if done.route is not None:
        attributes["frontgate.route"] = done.route
    if done.http_route is not None:
        attributes["http.route"] = done.http_route
    if done.consumer is not None:
        attributes["frontgate.consumer"] = done.consumer
    if done.status:
        attributes["http.response.status_code"] = done.status
    if done.tries:
        attributes["frontgate.upstream"] = done.tries[-1].upstream
    failed = done.status >= 500 or done.cut
    if done.cut:
        attributes["error.type"] = "response_cut"
    elif done.status >= 500:
        attributes["error.type"] = str(done.status)
    name = f"{name_method} {done.http_route}" if done.http_route else name_method
    spans = [ReadableSpan(
        name, server, parent, exporter.resource, attributes, kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR) if failed else Status(StatusCode.UNSET),
        start_time=exporter.unix_ns(done.started), end_time=exporter.unix_ns(done.ended),
        instrumentation_scope=exporter.scope,
    )]
    last = len(done.tries) - 1
    for index, attempt in enumerate(done.tries):
        span_id = trace.client_ids[index] if index < len(trace.client_ids) and trace.client_ids[index] else 0
        context = SpanContext(trace.trace_id, span_id or _new_span_id(), is_remote=False, trace_flags=flags,
                              trace_state=state)
        client: dict[str, AttributeValue] = {
            "http.request.method": method,
            "server.address": attempt.host,
            "server.port": attempt.port,
            "url.full": attempt.url + done.upstream_path,
            "network.protocol.name": "http",
            "network.protocol.version": attempt.protocol_version,
            "frontgate.upstream": attempt.upstream,
        }
        if method == "_OTHER":
            client["http.request.method_original"] = done.method
        if index:
            client["http.request.resend_count"] = index
        answered = index == last and done.upstream_answered
        if answered:
            client["http.response.status_code"] = done.status
            if done.grpc_status is not None:
                client["rpc.grpc.status_code"] = done.grpc_status
        error = None
        if answered and done.status >= 400:
            error = str(done.status)
        elif not attempt.ok:
            error = "response_cut" if answered else "upstream_failure"
        if error is not None:
            client["error.type"] = error
        spans.append(ReadableSpan(
            name_method, context, server, exporter.resource, client, kind=SpanKind.CLIENT,
            status=Status(StatusCode.ERROR) if error else Status(StatusCode.UNSET),
            start_time=exporter.unix_ns(attempt.started), end_time=exporter.unix_ns(attempt.ended),
            instrumentation_scope=exporter.scope,
        ))
    return spans


def _new_span_id() -> int:
    from random import getrandbits

    return getrandbits(64) or 1
