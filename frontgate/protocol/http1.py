"""HTTP/1.1 rules that do no I/O: what a request head must look like, and how heads and errors are written.

httptools (llhttp in strict mode) already refuses most ambiguous framing: Content-Length with
Transfer-Encoding, duplicate or malformed lengths, obs-fold, bare CR or LF, NUL and control characters,
invalid header names. `inspect_request_head` adds what llhttp leaves to the application (RFC 9112).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from mypy_extensions import mypyc_attr

from frontgate.errors import BadRequest, HttpError, NotImplementedByGateway

# Hop-by-hop fields (RFC 9110 §7.6.1) plus the legacy ones proxies still see; never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def header_tokens(value: bytes) -> list[bytes]:
    """Comma-separated tokens of a list-valued field, lowercased and trimmed."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


@dataclass(slots=True)
class RequestFraming:
    """What the head says about the body and the connection."""

    content_length: int | None
    chunked: bool
    host: bytes | None
    keep_alive: bool
    expect_continue: bool
    connection_tokens: frozenset[bytes]
    upgrade: frozenset[bytes] | None = None  # the Upgrade field's protocols, lowercased; None without one


_NO_TOKENS: frozenset[bytes] = frozenset()


def inspect_request_head(headers: list[tuple[bytes, bytes]], http_version: str) -> RequestFraming:
    """Check the rules llhttp does not and return the framing facts. Raises BadRequest (400) or
    NotImplementedByGateway (501) — both close the connection, since the body's length is unknowable.

    `headers` holds only the framing fields (host, content-length, transfer-encoding, connection, expect,
    upgrade).
    """
    if len(headers) == 1 and headers[0][0] == b"host" and http_version == "1.1":
        # Most requests: a GET with only a Host among the framing fields.
        only_host = headers[0][1]
        if not valid_host(only_host):
            raise BadRequest("The Host header is malformed.")
        return RequestFraming(None, False, only_host, True, False, _NO_TOKENS)
    host: bytes | None = None
    host_count = 0
    content_length: int | None = None
    transfer_encodings: list[bytes] = []
    connection: list[bytes] = []
    expect: bytes | None = None
    upgrade: list[bytes] | None = None
    for name, value in headers:
        if name == b"host":
            host_count += 1
            host = value
        elif name == b"content-length":
            # llhttp refuses all but one run of digits; checked again so no other caller can pass `+3`.
            if not value.isdigit():
                raise BadRequest("The Content-Length header is malformed.")
            content_length = int(value)
        elif name == b"transfer-encoding":
            transfer_encodings.extend(header_tokens(value))
        elif name == b"connection":
            connection.extend(header_tokens(value))
        elif name == b"expect":
            expect = value.strip().lower()
        elif name == b"upgrade":
            upgrade = [*(upgrade or ()), *header_tokens(value)]

    if http_version == "1.1" and host_count == 0:
        raise BadRequest("An HTTP/1.1 request needs a Host header.")
    if host_count > 1:
        raise BadRequest("The request has more than one Host header.")
    if host is not None and not valid_host(host):
        raise BadRequest("The Host header is malformed.")

    chunked = False
    if transfer_encodings:
        if http_version == "1.0":
            raise BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request.")
        if transfer_encodings[-1] != b"chunked":
            # RFC 9112 §6.1: without chunked last, the body's length cannot be known: 400 and close.
            raise BadRequest("Transfer-Encoding must end with chunked.")
        if transfer_encodings != [b"chunked"]:
            raise NotImplementedByGateway("Only the chunked transfer coding is supported.")
        chunked = True

    if expect is not None and expect != b"100-continue":
        raise HttpError417()

    tokens = frozenset(connection)
    if upgrade is not None and b"upgrade" in tokens and (content_length or chunked):
        # llhttp switches protocols right after the head of such a request, so its body would be parsed as
        # the next request while the upstream reads it as this one's body: a desync. Refused instead.
        raise BadRequest("A request that asks to upgrade the connection cannot carry a body.")
    # RFC 9112 §9.3: `close` wins in any version; HTTP/1.0 keeps alive only when asked to.
    keep_alive = b"close" not in tokens and (http_version == "1.1" or b"keep-alive" in tokens)
    return RequestFraming(
        content_length=content_length,
        chunked=chunked,
        host=host,
        keep_alive=keep_alive,
        expect_continue=expect == b"100-continue",
        connection_tokens=tokens,
        upgrade=frozenset(upgrade) if upgrade is not None else None,
    )


@mypyc_attr(native_class=False)  # compiled (setup.py), a native class would not keep these class attributes
class HttpError417(HttpError):
    status = 417
    code = "expectation_failed"
    message = "Only 'Expect: 100-continue' is supported."
    close_connection = True


# RFC 3986 host [":" port]: a reg-name (unreserved, sub-delims, pct-encoded) or an IP literal in brackets;
# never userinfo, a path or spaces.
_HOST = re.compile(rb"^(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def valid_host(host: bytes) -> bool:
    return len(host) <= 255 and _HOST.match(host) is not None


def host_without_port(host: bytes) -> str:
    """Lowercase host name for routing; the port is not part of host matching."""
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1].decode("ascii").lower()
    return host.partition(b":")[0].decode("ascii").lower()


def error_body(error: HttpError, request_id: str) -> bytes:
    return json.dumps(
        {"error": error.code, "message": error.message, "request_id": request_id}, separators=(",", ":")
    ).encode()


def render_response(
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    content_type: bytes | None,
    close: bool,
    date_line: bytes,
    head_only: bool = False,
) -> bytes:
    """A whole response the gateway makes itself, in one buffer for one write. `date_line` is the cached
    `date: ...\r\n` (RFC 9110 §6.6.1: a server with a clock sends Date)."""
    parts = [status_line(status), date_line]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    if content_type is not None and body:
        parts.append(b"content-type: " + content_type + b"\r\n")
    if status >= 200 and status not in _NO_BODY_STATUS:  # RFC 9110 §8.6: none on 1xx, 204 or 304
        parts.append(b"content-length: %d\r\n" % len(body))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


_NO_BODY_STATUS = frozenset({204, 304})


def split_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """`name: value\r\n` lines back into pairs (a name is a token, so the first ": " ends it)."""
    pairs = []
    for line in lines:
        colon = line.index(b": ")
        pairs.append((line[:colon], line[colon + 2 : -2]))
    return pairs


def forwarded_response_head(
    status: int,
    lines: list[bytes],
    content_length: int | None,
    date_line: bytes,
    head_only: bool,
    client_version: str,
    close: bool,
) -> tuple[bytes, bool, bool]:
    """The head to write for an upstream's response; `lines` are its headers as `name: value\r\n`, already
    stripped of hop-by-hop fields.
    `date_line` is the gateway's `date: ...\r\n`, or b"" when the response has its own Date.

    Returns (head bytes, chunked: re-chunk the body, close: close after the body). The body keeps the
    upstream's Content-Length when it had one; otherwise HTTP/1.1 clients get it chunked and HTTP/1.0
    clients learn its end from the connection closing.
    """
    # `date_line` is empty when the upstream sent its own Date (RFC 9110 §6.6.1: else the gateway adds one).
    parts = [STATUS_LINES.get(status) or status_line(status), date_line, *lines]
    chunked = False
    if content_length is not None:
        parts.append(b"content-length: %d\r\n" % content_length)
    elif not (head_only or status in _NO_BODY_STATUS):
        if client_version == "1.1":
            chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            close = True
    if close:
        parts.append(b"connection: close\r\n")
    elif client_version == "1.0":
        parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), chunked, close


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def date_line(now: float) -> bytes:
    return b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
