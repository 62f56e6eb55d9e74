"""The exchange's HTTP/1.1 request head as HTTP/2 header fields, and HTTP/2 response fields as the
`name: value\r\n` lines the exchange relays. No I/O.

The exchange renders one head for every upstream (request line, `host:` first, the gateway's
`x-request-deadline` next, framing fields last); HTTP/2 upstreams read it back here rather than the
exchange learning a second format: that costs only requests that go to HTTP/2 upstreams.
"""

from __future__ import annotations

from dataclasses import dataclass

from frontgate.protocol.grpc_status import status_code
from frontgate.protocol.grpc_timeout import format_timeout, parse_timeout
from frontgate.protocol.http1 import HOP_BY_HOP

Fields = list[tuple[bytes, bytes]]

# Connection-specific fields are malformed in HTTP/2 (RFC 9113 §8.2.2); `host` becomes :authority.
_NOT_SENT = HOP_BY_HOP | {b"host", b"http2-settings"}
# Response fields the exchange does not relay as lines: framing is redone on the client side.
_NOT_RELAYED = HOP_BY_HOP | {b"content-length"}
_TE_TRAILERS = (b"te", b"trailers")  # gRPC servers require it; it says trailers will be read


@dataclass(slots=True)
class H2Request:
    fields: Fields  # pseudo-header fields first
    has_body: bool  # False: the HEADERS frame ends the stream


def request_fields(head: bytes, scheme: bytes, grpc: bool, chunked_body: bool) -> H2Request:
    """Translate a rendered HTTP/1.1 head. For gRPC upstreams the gateway's deadline travels as
    `grpc-timeout` (the smaller of the client's and the gateway's), which gRPC servers enforce."""
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    authority = b""
    fields: Fields = []
    has_body = chunked_body
    deadline_ms: int | None = None
    client_timeout: bytes | None = None
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        value = value.strip()
        if name in _NOT_SENT:
            if name == b"host":
                authority = value
            continue
        if name == b"content-length":
            has_body = value != b"0"
        elif grpc:
            if name == b"x-request-deadline":
                deadline_ms = int(value)
                continue
            if name == b"grpc-timeout":
                client_timeout = value
                continue
        fields.append((name, value))
    leading = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", target)]
    if grpc:
        leading.append(_TE_TRAILERS)
        timeout = _grpc_timeout(deadline_ms, client_timeout)
        if timeout is not None:
            leading.append((b"grpc-timeout", timeout))
    return H2Request(leading + fields, has_body)


def _grpc_timeout(deadline_ms: int | None, client_timeout: bytes | None) -> bytes | None:
    client_seconds = parse_timeout(client_timeout) if client_timeout is not None else None
    if deadline_ms is None:
        return client_timeout if client_seconds is not None else None
    if client_seconds is not None and client_seconds * 1000 < deadline_ms:
        return client_timeout  # the client's own, shorter deadline, exactly as it was written
    return format_timeout(deadline_ms)


@dataclass(slots=True)
class H2Response:
    status: int
    lines: list[bytes]
    content_length: int | None
    has_date: bool
    grpc_status: int | None


def response_fields(fields: Fields) -> H2Response:
    """A response's (or informational response's) header fields; h2 has validated them already."""
    status = 0
    lines: list[bytes] = []
    content_length = None
    has_date = False
    grpc_status = None
    for name, value in fields:
        if name[:1] == b":":
            if name == b":status":
                status = int(value)
            continue
        if name in _NOT_RELAYED:
            if name == b"content-length":
                content_length = int(value)
            continue
        if name == b"date":
            has_date = True
        elif name == b"grpc-status":
            grpc_status = status_code(value)
        lines.append(name + b": " + value + b"\r\n")
    return H2Response(status, lines, content_length, has_date, grpc_status)


def trailer_lines(fields: Fields) -> tuple[list[bytes], int | None]:
    """Trailer fields as lines, and the `grpc-status` among them."""
    lines = []
    grpc_status = None
    for name, value in fields:
        if name[:1] == b":" or name in _NOT_RELAYED:
            continue
        if name == b"grpc-status":
            grpc_status = status_code(value)
        lines.append(name + b": " + value + b"\r\n")
    return lines, grpc_status
