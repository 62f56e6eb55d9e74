"""Real parts for the observability tests: a Prometheus scrape parsed by prometheus_client's own parser, and
an OTLP/HTTP collector that decodes `ExportTraceServiceRequest` protobufs as a real collector would."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import RunningGateway


def admin_get(gateway: RunningGateway, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET on the admin listener."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.admin_port}{path}", timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


@dataclass
class Scrape:
    """One /metrics page: every sample as (name, labels) -> value, plus the raw text."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def series(self) -> int:
        return len(self.samples)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for (n, ls) in self.samples if n == name and label in dict(ls)}


def scrape(gateway: RunningGateway) -> Scrape:
    status, content_type, body = admin_get(gateway, "/metrics")
    assert status == 200, body
    assert content_type.startswith("text/plain")
    text = body.decode()
    result = Scrape(text)
    for family in text_string_to_metric_families(text):
        result.types[family.name] = family.type
        for sample in family.samples:
            result.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return result


def wait_until(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


# --- an OTLP/HTTP collector --------------------------------------------------------------------------------


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int  # 2 server, 3 client (opentelemetry.proto.trace.v1.Span.SpanKind)
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int
    end_ns: int
    trace_state: str
    resource: dict[str, Any]


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class OtlpCollector:
    """Listens on 127.0.0.1 (port 0), accepts POST /v1/traces and keeps every span it decoded."""

    SERVER, CLIENT = 2, 3

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                collector.requests += 1
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector._keep(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _keep(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {kv.key: _any_value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(ReceivedSpan(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name, span.kind,
                        {kv.key: _any_value(kv.value) for kv in span.attributes}, span.status.code,
                        span.start_time_unix_nano, span.end_time_unix_nano, span.trace_state, resource,
                    ))

    def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedSpan]:
        wait_until(lambda: len(self.spans) >= count, timeout)
        return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
