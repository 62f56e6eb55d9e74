"""OTLP/HTTP by hand: finished requests -> the protobuf bytes of an `ExportTraceServiceRequest`
(opentelemetry/proto/collector/trace/v1), sent on a keep-alive `http.client` connection.

The spans follow the OpenTelemetry HTTP semantic conventions (stable HTTP attributes: `http.request.method`,
`url.*`, `server.*`, `client.address`, `http.response.status_code`, `http.route`, `error.type`,
`http.request.resend_count`). The server span is the request as the client saw it: from its head to the end
of the response. Each try sent upstream is a client span under it, from choosing the target (connecting
included) to the end of the target's response or failure. The `traceparent` the upstream received names that
client span.

The bytes are what the OpenTelemetry SDK's exporter sent for the same spans (same fields, flags and empty
status), without its objects: the attributes that repeat from request to request (method, route, status,
upstream...) are encoded once per combination and kept, so a span is mostly a join of cached bytes. The
resource is service.name, service.instance.id (random, per exporter) and telemetry.sdk.* describing this
encoder (language python, name frontgate, frontgate's version), plus OTEL_RESOURCE_ATTRIBUTES as the SDK read
it; the instrumentation scope is "frontgate".
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
import struct
import time
import uuid
from collections.abc import Sequence
from random import getrandbits
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from frontgate import __version__
from frontgate.observability.metrics import METHOD_CLASSES

if TYPE_CHECKING:
    from frontgate.observability.tracing import _Finished, _Try

AttributeValue = str | int | float | bool

_U64 = (1 << 64) - 1
_SMALL = [bytes((n,)) for n in range(128)]
# Span fields (opentelemetry/proto/trace/v1/trace.proto), as tag bytes: (field << 3) | wire type.
_SPAN_ID = b"\x12\x08"  # span_id = 2, 8 bytes
_TRACE_STATE = b"\x1a"  # trace_state = 3
_PARENT = b"\x22\x08"  # parent_span_id = 4, 8 bytes
_NAME = b"\x2a"  # name = 5
_ATTRIBUTE = b"\x4a"  # attributes = 9 (KeyValue)
# kind = 6 (varint), start_time_unix_nano = 7 and end_time_unix_nano = 8 (fixed64, little-endian).
_KIND_TIMES = struct.Struct("<BBBQBQ")
_SERVER, _CLIENT = 2, 3
# status = 15: unset is an empty Status, as the SDK sends it; error is code (3) = 2.
_UNSET = b"\x7a\x00"
_ERROR = b"\x7a\x02\x18\x02"
# flags = 16 (fixed32): the SDK's SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE (0x100), plus IS_REMOTE (0x200) when the
# parent came from the caller.
_LOCAL_PARENT = b"\x85\x01" + struct.pack("<I", 0x100)
_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", 0x300)
_SPAN = b"\x12"  # ScopeSpans.spans = 2
_MAX_CACHED = 4096  # cached attribute combinations; the cache starts over beyond

# W3C trace context tracestate members, as the SDK's TraceState accepts them.
_STATE_KEY = re.compile(r"[a-z][_0-9a-z\-\*\/]{0,255}|[a-z0-9][_0-9a-z\-\*\/]{0,240}@[a-z][_0-9a-z\-\*\/]{0,13}")
_STATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


# --- protobuf wire format -----------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """A base-128 varint; negative numbers as their 64-bit two's complement (int64)."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return tag + varint(len(payload)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")  # a lone surrogate must not lose the batch


def key_value(key: str, value: AttributeValue) -> bytes:
    """A KeyValue message: key = 1, value = 2 (AnyValue: string 1, bool 2, int64 3, double 4)."""
    if isinstance(value, bool):
        any_value = b"\x10\x01" if value else b"\x10\x00"
    elif isinstance(value, str):
        any_value = field(b"\x0a", _text(value))
    elif isinstance(value, int):
        any_value = b"\x18" + varint(value)
    else:
        any_value = b"\x21" + struct.pack("<d", value)
    return field(b"\x0a", _text(key)) + field(b"\x12", any_value)


def attribute(key: str, value: AttributeValue) -> bytes:
    """A span's attribute field."""
    return field(_ATTRIBUTE, key_value(key, value))


def key_head(key: str) -> bytes:
    """A KeyValue up to the length of its value, for `string_attribute`."""
    return field(b"\x0a", _text(key)) + b"\x12"


def string_attribute(head: bytes, value: str) -> bytes:
    """`attribute(key, value)` for a string that changes from request to request (`head`: `key_head(key)`),
    in one formatting operation when every length fits in a byte, as they mostly do."""
    data = _text(value)
    size = len(data)
    kv_size = len(head) + size + 3
    if kv_size < 0x80:
        return b"J%c%s%c\n%c%s" % (kv_size, head, size + 2, size, data)  # J: _ATTRIBUTE, \n: string_value
    any_value = field(b"\x0a", data)
    return field(_ATTRIBUTE, head + varint(len(any_value)) + any_value)


# --- spans --------------------------------------------------------------------------------------------------

# The attributes whose values change with every request.
_URL_PATH = key_head("url.path")
_CLIENT_ADDRESS = key_head("client.address")
_PEER_ADDRESS = key_head("network.peer.address")
_REQUEST_ID = key_head("frontgate.request_id")
_URL_FULL = key_head("url.full")


def method_label(method: str) -> tuple[str, str]:
    """(span name prefix, http.request.method) per the semantic conventions: unknown methods are _OTHER."""
    return (method, method) if method in METHOD_CLASSES else ("HTTP", "_OTHER")


def trace_state(raw: str | None) -> str:
    """The tracestate the spans carry: the caller's valid members (the first of a key; at most 32 read)."""
    if not raw:
        return ""
    members: dict[str, str] = {}
    for member in raw.split(",")[:32]:
        key, sep, value = member.strip().partition("=")
        if sep and _STATE_KEY.fullmatch(key) and _STATE_VALUE.fullmatch(value):
            members.setdefault(key, value)
    return ",".join(f"{key}={value}" for key, value in members.items())


def resource_attributes(service_name: str) -> dict[str, AttributeValue]:
    """What the SDK's `Resource.create({"service.name": ...})` gave, with telemetry.sdk.* naming this encoder."""
    attributes: dict[str, AttributeValue] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "frontgate",
        "telemetry.sdk.version": __version__,
        "service.instance.id": str(uuid.uuid4()),
    }
    attributes.update(env_pairs("OTEL_RESOURCE_ATTRIBUTES"))
    attributes["service.name"] = service_name
    return attributes


def env_pairs(name: str) -> dict[str, str]:
    """An OpenTelemetry environment variable of comma-separated key=value pairs, values percent-encoded."""
    pairs: dict[str, str] = {}
    for item in os.environ.get(name, "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = unquote(value.strip())
    return pairs


class SpanEncoder:
    """Turns finished requests into one ExportTraceServiceRequest (one resource, one scope)."""

    def __init__(self, service_name: str, offset: float) -> None:
        resource = b"".join(field(b"\x0a", key_value(k, v)) for k, v in resource_attributes(service_name).items())
        self._resource = field(b"\x0a", resource)  # ResourceSpans.resource = 1
        self._scope = field(b"\x0a", field(b"\x0a", b"frontgate"))  # ScopeSpans.scope = 1 {name = 1}
        self._offset = offset  # monotonic seconds -> Unix time
        self._cache: dict[tuple[object, ...], bytes] = {}

    def encode(self, requests: Sequence[_Finished]) -> bytes:
        spans: list[bytes] = []
        for done in requests:
            self._add_spans(done, spans)
        scope_spans = field(b"\x12", self._scope + b"".join(spans))  # ResourceSpans.scope_spans = 2
        return field(b"\x0a", self._resource + scope_spans)  # ExportTraceServiceRequest.resource_spans = 1

    def _add_spans(self, done: _Finished, spans: list[bytes]) -> None:
        """The request's server span, then a client span per try, each as a ScopeSpans.spans field."""
        trace = done.trace
        # What every span of the request starts with: trace_id = 1 (16 bytes), then (after the span id)
        # the trace state.
        trace_id = b"\x0a\x10" + trace.trace_id.to_bytes(16)
        state = trace_state(trace.tracestate) if trace.tracestate else ""
        state_field = field(_TRACE_STATE, state.encode()) if state else b""
        server_id = trace.span_id.to_bytes(8)
        offset = self._offset
        parts = [trace_id, _SPAN_ID, server_id, state_field]
        if trace.parent_id:
            parts += (_PARENT, trace.parent_id.to_bytes(8))
        parts += (
            self._server_fixed(done),
            _KIND_TIMES.pack(0x30, _SERVER, 0x39, int((done.started + offset) * 1e9), 0x41,
                             int((done.ended + offset) * 1e9)),
            string_attribute(_URL_PATH, done.path),
            string_attribute(_CLIENT_ADDRESS, done.client_ip),
            string_attribute(_PEER_ADDRESS, done.peer_ip),
            string_attribute(_REQUEST_ID, done.request_id),
        )
        if done.user_agent is not None:
            parts.append(self._cached("user_agent.original", done.user_agent))
        parts.append(_REMOTE_PARENT if trace.parent_id else _LOCAL_PARENT)
        span = b"".join(parts)
        spans += (_SPAN, varint(len(span)), span)
        ids = trace.client_ids
        last = len(done.tries) - 1
        for index, attempt in enumerate(done.tries):
            span_id = ids[index] if index < len(ids) else 0
            span = b"".join((
                trace_id, _SPAN_ID, (span_id or getrandbits(64) or 1).to_bytes(8), state_field, _PARENT, server_id,
                self._client_fixed(done, attempt, index, index == last and done.upstream_answered),
                _KIND_TIMES.pack(0x30, _CLIENT, 0x39, int((attempt.started + offset) * 1e9), 0x41,
                                 int((attempt.ended + offset) * 1e9)),
                string_attribute(_URL_FULL, attempt.url + done.upstream_path),
                _LOCAL_PARENT,
            ))
            spans += (_SPAN, varint(len(span)), span)

    def _cached(self, key: str, value: AttributeValue) -> bytes:
        """An attribute whose value repeats (a user agent, say): encoded once."""
        cache_key = (key, value)
        encoded = self._cache.get(cache_key)
        if encoded is None:
            encoded = self._keep(cache_key, attribute(key, value))
        return encoded

    def _keep(self, cache_key: tuple[object, ...], encoded: bytes) -> bytes:
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[cache_key] = encoded
        return encoded

    def _server_fixed(self, done: _Finished) -> bytes:
        """Name, status and the attributes that repeat across requests of a server span, cached by their
        values."""
        cache_key = (done.method, done.scheme, done.host, done.http_version, done.route, done.http_route,
                     done.consumer, done.status, done.tries[-1].upstream if done.tries else None, done.cut)
        encoded = self._cache.get(cache_key)
        if encoded is None:
            encoded = self._keep(cache_key, _server_fixed(done))
        return encoded

    def _client_fixed(self, done: _Finished, attempt: _Try, index: int, answered: bool) -> bytes:
        """The same for a client span."""
        status = done.status if answered else None
        grpc_status = done.grpc_status if answered else None
        if answered and done.status >= 400:
            error: str | None = str(done.status)
        elif not attempt.ok:
            error = "response_cut" if answered else "upstream_failure"
        else:
            error = None
        cache_key = (done.method, attempt.host, attempt.port, attempt.protocol_version, attempt.upstream, index,
                     status, grpc_status, error)
        encoded = self._cache.get(cache_key)
        if encoded is None:
            encoded = self._keep(cache_key, _client_fixed(done.method, attempt, index, status, grpc_status, error))
        return encoded


def _server_fixed(done: _Finished) -> bytes:
    name_method, method = method_label(done.method)
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "url.scheme": done.scheme,
        "network.protocol.name": "http",
        "network.protocol.version": done.http_version,
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = done.method
    if done.host:
        attributes["server.address"] = done.host
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
    if done.cut:
        attributes["error.type"] = "response_cut"
    elif done.status >= 500:
        attributes["error.type"] = str(done.status)
    name = f"{name_method} {done.http_route}" if done.http_route else name_method
    failed = done.status >= 500 or done.cut
    return _fixed(name, attributes, failed)


def _client_fixed(method_original: str, attempt: _Try, index: int, status: int | None, grpc_status: int | None,
                  error: str | None) -> bytes:
    name_method, method = method_label(method_original)
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "server.address": attempt.host,
        "server.port": attempt.port,
        "network.protocol.name": "http",
        "network.protocol.version": attempt.protocol_version,
        "frontgate.upstream": attempt.upstream,
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = method_original
    if index:
        attributes["http.request.resend_count"] = index
    if status is not None:
        attributes["http.response.status_code"] = status
    if grpc_status is not None:
        attributes["rpc.grpc.status_code"] = grpc_status
    if error is not None:
        attributes["error.type"] = error
    return _fixed(name_method, attributes, error is not None)


def _fixed(name: str, attributes: dict[str, AttributeValue], failed: bool) -> bytes:
    encoded = [field(_NAME, _text(name)), *(attribute(k, v) for k, v in attributes.items())]
    encoded.append(_ERROR if failed else _UNSET)
    return b"".join(encoded)


# --- HTTP ---------------------------------------------------------------------------------------------------


class OtlpSender:
    """POSTs protobuf bodies to the collector on one keep-alive connection (made again when it drops)."""

    def __init__(self, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        # Made once: it loads the CA certificates.
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._tls is not None else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Extra headers (a collector's API key, say) as the SDK's exporter read them.
        self._headers = {**env_pairs("OTEL_EXPORTER_OTLP_HEADERS"), **env_pairs("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
                         "Content-Type": "application/x-protobuf", "User-Agent": f"frontgate/{__version__}"}
        self._connection: http.client.HTTPConnection | None = None
        self.connects = 0  # connections opened (or tried): a collector that is down sees few

    def post(self, body: bytes, timeout: float) -> bool:
        """Whether the collector took the body (a 2xx), within about `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            reused = self._connection is not None and self._connection.sock is not None
            try:
                connection = self._connect(timeout)
                connection.request("POST", self._path, body, self._headers)
                response = connection.getresponse()
                response.read()  # the whole answer, so the connection can carry the next batch
            except (OSError, http.client.HTTPException):
                self.close()
                timeout = deadline - time.monotonic()
                if reused and timeout > 0.1:  # the collector closed an idle connection: once more on a new one
                    continue
                return False
            return 200 <= response.status < 300

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is None:
            if self._tls is not None:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._connection = connection
        if connection.sock is None:  # new, or closed after a "connection: close" answer
            connection.timeout = timeout
            self.connects += 1
            connection.connect()
        else:
            connection.sock.settimeout(timeout)
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
