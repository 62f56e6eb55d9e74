"""The hand-made OTLP encoder, checked by decoding its bytes with opentelemetry-proto, and the export
thread's HTTP: keep-alive, a connection the collector dropped, and backing off from a collector that is down."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from frontgate.config.schema import Tracing
from frontgate.observability import tracing
from frontgate.observability.otlp import OtlpSender, SpanEncoder, trace_state, varint
from frontgate.observability.tracing import BATCH, SpanExporter, Trace, _Finished, _Try

OFFSET = 1_700_000_000.0  # monotonic seconds -> Unix time, for the test
TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
LONG_PATH = "/orders/" + "x" * 300  # lengths over 127 take varints of two bytes


def _finished(trace: Trace, tries: list[_Try], **fields: Any) -> _Finished:
    values: dict[str, Any] = {
        "method": "GET", "scheme": "http", "host": "api.example.com", "path": "/orders/42",
        "upstream_path": "/orders/42", "client_ip": "10.1.2.3", "peer_ip": "10.0.0.9", "http_version": "1.1",
        "user_agent": "curl/8.0", "route": "orders", "http_route": "/orders/*", "request_id": "req-1",
        "consumer": None, "status": 200, "grpc_status": None, "upstream_answered": True, "cut": False,
        "started": 10.0, "ended": 10.5,
    }
    values.update(fields)
    return _Finished(trace=trace, tries=tries, **values)


def _try(host: str, started: float, ended: float, ok: bool, protocol: str = "1.1") -> _Try:
    return _Try("orders", host, 8080, f"http://{host}:8080", started, ended, ok, protocol)


def _ns(monotonic: float) -> int:
    return int((monotonic + OFFSET) * 1e9)


def _attributes(span: Span) -> dict[str, Any]:
    def value(any_value: AnyValue) -> Any:
        kind = any_value.WhichOneof("value")
        return getattr(any_value, kind) if kind else None

    return {kv.key: value(kv.value) for kv in span.attributes}


def _decode(body: bytes) -> tuple[dict[str, Any], str, list[Span]]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    return resource, scope_spans.scope.name, list(scope_spans.spans)


def test_spans_decode_with_their_ids_links_kinds_times_attributes_and_status() -> None:
    retried = Trace(TRACE, 0, True, None)
    retried.client_ids = [0x1111, 0x2222]
    first = _finished(retried, [_try("10.0.0.1", 10.1, 10.2, False), _try("10.0.0.2", 10.2, 10.4, True)],
                      path=LONG_PATH, upstream_path=LONG_PATH)
    continued = Trace(0x1234, 0x00F067AA0BA902B7, True, "vendor=abc, other=1,BAD=x,vendor=again")
    continued.client_ids = [0x3333]
    second = _finished(continued, [_try("10.0.0.3", 11.1, 11.2, True, "2")], user_agent=None, consumer="alice",
                       grpc_status=14, status=503, http_route=None, started=11.0, ended=11.3)
    odd = Trace(0x99, 0, True, None)  # its try's traceparent was never written: a span id is made up
    third = _finished(odd, [_try("10.0.0.1", 12.1, 12.2, False)], method="PURGE", status=502, http_route=None,
                      route=None, host="", upstream_answered=False, cut=True, started=12.0, ended=12.3)

    resource, scope, spans = _decode(SpanEncoder("edge", OFFSET).encode([first, second, third]))

    assert resource["service.name"] == "edge" and resource["telemetry.sdk.language"] == "python"
    assert resource["telemetry.sdk.name"] == "frontgate" and resource["service.instance.id"]
    assert scope == "frontgate"
    assert [(s.name, s.kind) for s in spans] == [
        ("GET /orders/*", Span.SPAN_KIND_SERVER), ("GET", Span.SPAN_KIND_CLIENT), ("GET", Span.SPAN_KIND_CLIENT),
        ("GET", Span.SPAN_KIND_SERVER), ("GET", Span.SPAN_KIND_CLIENT),
        ("HTTP", Span.SPAN_KIND_SERVER), ("HTTP", Span.SPAN_KIND_CLIENT),
    ]
    server, retry_one, retry_two, caller_server, caller_client, odd_server, odd_client = spans

    # A trace the gateway started, retried once.
    assert server.trace_id == retry_one.trace_id == retry_two.trace_id == TRACE.to_bytes(16)
    assert server.span_id == retried.span_id.to_bytes(8) and server.parent_span_id == b""
    assert (retry_one.span_id, retry_two.span_id) == ((0x1111).to_bytes(8), (0x2222).to_bytes(8))
    assert retry_one.parent_span_id == retry_two.parent_span_id == server.span_id
    assert (server.start_time_unix_nano, server.end_time_unix_nano) == (_ns(10.0), _ns(10.5))
    assert (retry_two.start_time_unix_nano, retry_two.end_time_unix_nano) == (_ns(10.2), _ns(10.4))
    assert server.flags == 0x100 and retry_one.flags == 0x100  # the SDK's "parent is not remote"
    assert server.trace_state == "" and server.HasField("status") and server.status.code == 0
    assert _attributes(server) == {
        "http.request.method": "GET", "url.path": LONG_PATH, "url.scheme": "http", "client.address": "10.1.2.3",
        "network.peer.address": "10.0.0.9", "network.protocol.name": "http", "network.protocol.version": "1.1",
        "frontgate.request_id": "req-1", "server.address": "api.example.com", "user_agent.original": "curl/8.0",
        "frontgate.route": "orders", "http.route": "/orders/*", "http.response.status_code": 200,
        "frontgate.upstream": "orders",
    }
    assert _attributes(retry_one) == {
        "http.request.method": "GET", "server.address": "10.0.0.1", "server.port": 8080,
        "url.full": "http://10.0.0.1:8080" + LONG_PATH, "network.protocol.name": "http",
        "network.protocol.version": "1.1", "frontgate.upstream": "orders", "error.type": "upstream_failure",
    }
    assert retry_one.status.code == 2
    assert _attributes(retry_two)["http.request.resend_count"] == 1
    assert _attributes(retry_two)["http.response.status_code"] == 200 and retry_two.status.code == 0

    # A sampled caller's trace: its span is our server span's parent, its valid tracestate on every span.
    assert caller_server.trace_id == caller_client.trace_id == (0x1234).to_bytes(16)
    assert caller_server.parent_span_id == (0x00F067AA0BA902B7).to_bytes(8) and caller_server.flags == 0x300
    assert caller_server.trace_state == caller_client.trace_state == "vendor=abc,other=1"
    assert caller_client.parent_span_id == caller_server.span_id and caller_client.span_id == (0x3333).to_bytes(8)
    server_attributes = _attributes(caller_server)
    assert server_attributes["error.type"] == "503" and caller_server.status.code == 2
    assert server_attributes["frontgate.consumer"] == "alice" and "user_agent.original" not in server_attributes
    client_attributes = _attributes(caller_client)
    assert client_attributes["rpc.grpc.status_code"] == 14 and client_attributes["error.type"] == "503"
    assert client_attributes["network.protocol.version"] == "2" and caller_client.status.code == 2

    # An unknown method, a gateway error and a cut response.
    server_attributes = _attributes(odd_server)
    assert server_attributes["http.request.method"] == "_OTHER"
    assert server_attributes["http.request.method_original"] == "PURGE"
    assert server_attributes["error.type"] == "response_cut" and odd_server.status.code == 2
    assert "server.address" not in server_attributes and "frontgate.route" not in server_attributes
    client_attributes = _attributes(odd_client)
    assert client_attributes["http.request.method"] == "_OTHER"
    assert client_attributes["error.type"] == "upstream_failure"
    assert "http.response.status_code" not in client_attributes
    assert odd_client.span_id not in (b"", bytes(8)) and odd_client.parent_span_id == odd_server.span_id


def test_cached_attributes_give_the_same_bytes_as_fresh_ones() -> None:
    trace = Trace(TRACE, 0, True, None)
    trace.client_ids = [0x1111]
    done = _finished(trace, [_try("10.0.0.1", 10.1, 10.2, True)])
    encoder = SpanEncoder("edge", OFFSET)
    assert encoder.encode([done]) == encoder.encode([done])


def test_tracestate_keeps_valid_members_once() -> None:
    assert trace_state("vendor=abc, other=1,BAD=x,vendor=again,empty=") == "vendor=abc,other=1"
    assert trace_state(None) == "" and trace_state("nonsense") == ""


def test_varints() -> None:
    assert [varint(n) for n in (0, 127, 128, 300)] == [b"\x00", b"\x7f", b"\x80\x01", b"\xac\x02"]
    assert varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1


# --- HTTP ---------------------------------------------------------------------------------------------------


class RawCollector:
    """Answers each POST with `status`; closes the connection after `per_connection` requests without saying
    so, as a collector closing an idle keep-alive connection does."""

    def __init__(self, status: int = 200, per_connection: int = 100, tls: ssl.SSLContext | None = None) -> None:
        self.status = status
        self.per_connection = per_connection
        self.tls = tls
        self.connections = 0
        self.bodies: list[bytes] = []
        self.heads: list[list[bytes]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_side=True)
            except ssl.SSLError:  # a client that does not trust us
                sock.close()
                return
        with sock, sock.makefile("rb") as reader:
            for _ in range(self.per_connection):
                head = []
                line = reader.readline()
                while line not in (b"\r\n", b""):
                    head.append(line.rstrip(b"\r\n").lower())
                    line = reader.readline()
                if not head:
                    return
                length = next((int(h.split(b":")[1]) for h in head if h.startswith(b"content-length:")), 0)
                self.heads.append(head)
                self.bodies.append(reader.read(length))
                sock.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % self.status)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def raw_collector() -> Iterator[RawCollector]:
    collector = RawCollector()
    yield collector
    collector.close()


def test_batches_share_a_keep_alive_connection(raw_collector: RawCollector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%20cret,x-team=edge")
    sender = OtlpSender(f"http://127.0.0.1:{raw_collector.port}/v1/traces")
    try:
        assert sender.post(b"one", 2.0) and sender.post(b"two", 2.0)
    finally:
        sender.close()
    assert raw_collector.bodies == [b"one", b"two"] and raw_collector.connections == sender.connects == 1
    head = raw_collector.heads[0]
    assert head[0] == b"post /v1/traces http/1.1"
    assert {b"content-type: application/x-protobuf", b"api-key: s cret", b"x-team: edge"} <= set(head)


def test_https_collectors_are_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    collector = RawCollector(tls=server_context)
    try:
        untrusted = OtlpSender(f"https://127.0.0.1:{collector.port}/v1/traces")
        assert not untrusted.post(b"one", 2.0)  # the CA is not one of the system's
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        trusted = OtlpSender(f"https://127.0.0.1:{collector.port}/v1/traces")
        assert trusted.post(b"two", 2.0)
        trusted.close()
    finally:
        collector.close()
    assert collector.bodies == [b"two"]


def test_a_dropped_connection_is_made_again(raw_collector: RawCollector) -> None:
    raw_collector.per_connection = 1
    sender = OtlpSender(f"http://127.0.0.1:{raw_collector.port}/v1/traces")
    try:
        assert sender.post(b"one", 2.0)
        time.sleep(0.05)  # the collector has closed it by now
        assert sender.post(b"two", 2.0)
    finally:
        sender.close()
    assert raw_collector.bodies == [b"one", b"two"] and raw_collector.connections == 2


def test_a_collector_that_refuses_a_batch_fails_it(raw_collector: RawCollector) -> None:
    raw_collector.status = 503
    sender = OtlpSender(f"http://127.0.0.1:{raw_collector.port}/v1/traces")
    try:
        assert not sender.post(b"one", 2.0)
    finally:
        sender.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_collector_is_tried_less_and_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "BACKOFF_FIRST", 0.05)
    monkeypatch.setattr(tracing, "BACKOFF_MAX", 0.2)
    exporter = SpanExporter(Tracing(otlp_endpoint=f"http://127.0.0.1:{_closed_port()}", sample_ratio=1.0))
    try:
        for _ in range(20 * BATCH):  # one span each: every failed try loses one batch
            exporter.queue.append(_finished(Trace(TRACE, 0, True, None), []))
        exporter.wake.set()
        time.sleep(0.5)
        attempts = exporter._sender.connects
        # Without backing off all 20 batches would have been tried at once; with it, tries come after
        # 0.05, 0.1, 0.2, 0.2... seconds.
        assert 2 <= attempts <= 6
        assert exporter.failed == attempts * BATCH and exporter.exported == 0
        assert exporter.queue and exporter.retry_at > 0
    finally:
        exporter.close(0.5)


def test_a_success_after_failures_resets_the_backoff(raw_collector: RawCollector,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "BACKOFF_FIRST", 0.05)
    raw_collector.status = 503
    exporter = SpanExporter(Tracing(otlp_endpoint=f"http://127.0.0.1:{raw_collector.port}", sample_ratio=1.0))
    try:
        exporter.queue.append(_finished(Trace(TRACE, 0, True, None), []))
        exporter.wake.set()
        deadline = time.monotonic() + 5
        while not exporter.failed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert exporter.failed == 1 and exporter._backoff == 0.1
        raw_collector.status = 200
        exporter.queue.append(_finished(Trace(TRACE, 0, True, None), []))
        while not exporter.exported and time.monotonic() < deadline:
            exporter.wake.set()
            time.sleep(0.01)
        assert exporter.exported == 1 and exporter._backoff == 0.05
    finally:
        exporter.close(0.5)
