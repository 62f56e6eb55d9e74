"""Strict HTTP/1.1 at the edge (SPEC §3 "Strict HTTP" and "Errors", RFC 9112): raw bytes in, what the
client sees and what the upstream received out.

One gateway serves the whole module (small limits, 1s head timeout) in front of one recording upstream.
Every refused request is followed on the same connection by a valid pipelined request, which must never be
answered: a refusal closes the connection, and nothing of a refused request reaches the upstream.

The wire helpers at the top (`Client`, `converse`, `parse_responses`, `assert_gateway_error`) are reused by
test_smuggling.py and the framing properties.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    echo,
    free_port,
    gateway_config,
    run_gateway,
)

# --- wire helpers -------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]  # names lowercased
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def parse_one(buffer: bytes, *, head_request: bool = False, eof: bool = False) -> tuple[Response, int] | None:
    """The first response in `buffer` and the bytes it took, or None while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    assert status_line[0] in ("HTTP/1.1", "HTTP/1.0"), f"not a status line: {lines[0]!r}"
    status = int(status_line[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    names = {name: value for name, value in headers}
    pos = end + 4
    if 100 <= status < 200 or status in (204, 304) or head_request:
        body = b""
    elif "chunked" in names.get("transfer-encoding", "").lower():
        parts = []
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(buffer[pos:line_end].split(b";")[0], 16)
            pos = line_end + 2
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", pos - 2)
                if trailer_end < 0:
                    return None
                pos = trailer_end + 4
                break
            if len(buffer) < pos + size + 2:
                return None
            parts.append(buffer[pos : pos + size])
            pos += size + 2
        body = b"".join(parts)
    elif "content-length" in names:
        length = int(names["content-length"])
        if len(buffer) < pos + length:
            return None
        body = buffer[pos : pos + length]
        pos += length
    else:
        if not eof:
            return None
        body = buffer[pos:]
        pos = len(buffer)
    return Response(status, headers, body, buffer[:pos]), pos


def parse_responses(data: bytes, *, head_requests: tuple[int, ...] = ()) -> list[Response]:
    """Every complete response in `data` (read until the connection closed), 1xx included, in order."""
    responses: list[Response] = []
    while data:
        parsed = parse_one(data, head_request=len(responses) in head_requests, eof=True)
        if parsed is None:
            break
        response, used = parsed
        responses.append(response)
        data = data[used:]
    return responses


@dataclass
class Conversation:
    data: bytes  # everything the gateway sent
    closed: bool  # the gateway closed the connection (EOF or reset) before the deadline
    elapsed: float  # seconds from the first byte sent to the close (or the deadline)


def converse(port: int, data: bytes, *, timeout: float = 3.0, segment: int = 0, pause: float = 0.0) -> Conversation:
    """Send `data` (in `segment`-byte writes `pause` seconds apart when `segment` is set), then read until
    the gateway closes or `timeout` passes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    received: list[bytes] = []
    closed = False
    with sock:
        try:
            if segment:
                for offset in range(0, len(data), segment):
                    sock.sendall(data[offset : offset + segment])
                    if pause:
                        time.sleep(pause)
            else:
                sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway gave up on us mid-send: what it said is still readable below
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received.append(chunk)
    return Conversation(b"".join(received), closed, time.monotonic() - start)


class Client:
    """One client connection for step-by-step conversations (Expect, keep-alive, limits before the body)."""

    def __init__(self, port: int, timeout: float = 3.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""
        self.eof = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def read_response(self, *, head_request: bool = False, timeout: float | None = None) -> Response:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            parsed = parse_one(self.buffer, head_request=head_request, eof=self.eof)
            if parsed is not None:
                response, used = parsed
                self.buffer = self.buffer[used:]
                return response
            if not self._fill(deadline):
                parsed = parse_one(self.buffer, head_request=head_request, eof=True) if self.eof else None
                if parsed is not None:
                    self.buffer = self.buffer[parsed[1] :]
                    return parsed[0]
                raise AssertionError(f"no complete response (eof={self.eof}); got {self.buffer[:300]!r}")

    def wait_closed(self, timeout: float) -> tuple[bool, bytes]:
        """Wait up to `timeout` for the gateway to close; returns (closed, bytes received meanwhile)."""
        deadline = time.monotonic() + timeout
        before = len(self.buffer)
        while not self.eof and self._fill(deadline):
            pass
        return self.eof, self.buffer[before:]


_LEAKS = ("Traceback", 'File "', ".py", "/work/", "site-packages", "127.0.0.1", "HttpParser", "llhttp", "Exception")


def assert_gateway_error(response: Response, status: int | tuple[int, ...], upstream: RecordingUpstream) -> None:
    """The SPEC §3 error shape: JSON {"error", "message", "request_id"}, the right status, no internals."""
    allowed = status if isinstance(status, tuple) else (status,)
    assert response.status in allowed, f"expected {allowed}, got {response.raw[:400]!r}"
    assert (response.header("content-type") or "").startswith("application/json"), response.raw[:400]
    payload = response.json()
    assert isinstance(payload, dict)
    assert set(payload) == {"error", "message", "request_id"}, payload
    for key in ("error", "message", "request_id"):
        assert isinstance(payload[key], str) and payload[key], payload
    text = response.raw.decode("latin-1")
    for leak in (*_LEAKS, f":{upstream.port}"):
        assert leak not in text, f"the error leaks {leak!r}: {text!r}"


def assert_nothing_forwarded(upstream: RecordingUpstream, settle: float = 0.1) -> None:
    time.sleep(settle)  # anything wrongly forwarded has had time to be parsed upstream
    assert [(r.method, r.target, r.body) for r in upstream.requests] == []


def head_aware_echo(request: ReceivedRequest, sock: socket.socket) -> bytes:
    """The helpers' echo, but a correct server: no body after a HEAD response head."""
    answer = echo(request, sock)
    if request.method == "HEAD":
        return answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    return answer


# --- the gateway under test ---------------------------------------------------------------------------

DECLARED_HOST = "api.example.com"
MAX_HEADER_BYTES = 2048
MAX_HEADERS = 20
MAX_URI_BYTES = 1024
MAX_BODY_BYTES = 1024
ROUTE_BODY_LIMIT = 100
READ_HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.5

# A valid request pipelined after each refused one: it must never be answered.
FOLLOW_UP = b"GET /pipelined-after-refusal HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def strict_gateway_config(upstream_url: str) -> dict[str, Any]:
    routes = [
        {"name": "small-body", "match": {"paths": ["/small"]}, "to": "app",
         "plugins": {"body_limit": ROUTE_BODY_LIMIT}},
        {"name": "declared-host", "match": {"hosts": [DECLARED_HOST], "paths": ["/"]}, "to": "app"},
        {"name": "everything", "match": {"paths": ["/"]}, "to": "app"},
    ]
    return gateway_config(
        free_port(), free_port(), {"app": [upstream_url]}, routes,
        server={
            "limits": {"max_header_bytes": "2KiB", "max_headers": MAX_HEADERS, "max_uri_bytes": "1KiB",
                       "max_body_bytes": "1KiB"},
            "timeouts": {"drain": "2s", "read_header": "1s", "idle": "1500ms"},
        },
    )


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(head_aware_echo)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, recorder: RecordingUpstream) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("strict-http"), strict_gateway_config(recorder.url)) as running:
        yield running


@pytest.fixture
def upstream(recorder: RecordingUpstream) -> RecordingUpstream:
    """The module's recording upstream, with what earlier tests sent it forgotten."""
    del recorder.requests[:]
    return recorder


def assert_refused(gateway: RunningGateway, upstream: RecordingUpstream, request: bytes,
                   status: int | tuple[int, ...]) -> None:
    """`request` (followed by a valid pipelined one) gets exactly one error response, then the connection
    closes, and nothing reached the upstream."""
    reply = converse(gateway.port, request + FOLLOW_UP)
    responses = parse_responses(reply.data)
    assert responses, f"no response at all; got {reply.data[:300]!r} (closed={reply.closed})"
    assert_gateway_error(responses[0], status, upstream)
    assert len(responses) == 1, f"the pipelined request after the refused one was answered: {reply.data!r}"
    assert reply.closed, "the connection stayed open after a refusal"
    assert responses[0].header("connection") == "close", "a refusal should announce the close (RFC 9112 §9.6)"
    assert_nothing_forwarded(upstream)


def _post(headers: bytes, body: bytes, version: bytes = b"1.1") -> bytes:
    return b"POST / HTTP/" + version + b"\r\nHost: gw.test\r\n" + headers + b"\r\n" + body


def _get(headers: bytes = b"", target: bytes = b"/", request_line: bytes | None = None) -> bytes:
    line = request_line if request_line is not None else b"GET " + target + b" HTTP/1.1"
    return line + b"\r\nHost: gw.test\r\n" + headers + b"\r\n"


def _chunked(body: bytes) -> bytes:
    return _post(b"Transfer-Encoding: chunked\r\n", body)


CHUNKED_EMPTY = b"0\r\n\r\n"

REFUSED = [
    # Content-Length together with Transfer-Encoding, both orders (RFC 9112 §6.1: smuggling).
    pytest.param(_post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", CHUNKED_EMPTY), 400,
                 id="content_length_then_transfer_encoding"),
    pytest.param(_post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", CHUNKED_EMPTY), 400,
                 id="transfer_encoding_then_content_length"),
    # Malformed or repeated lengths (RFC 9112 §6.3 rule 5: MUST 400 and close).
    pytest.param(_post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), 400,
                 id="duplicate_content_length_same_value"),
    pytest.param(_post(b"Content-Length: 3\r\nContent-Length: 5\r\n", b"abcde"), 400,
                 id="duplicate_content_length_different_values"),
    pytest.param(_post(b"Content-Length: 3, 3\r\n", b"abc"), 400, id="content_length_list_3_3"),
    pytest.param(_post(b"Content-Length: +3\r\n", b"abc"), 400, id="content_length_plus_sign"),
    pytest.param(_post(b"Content-Length: -1\r\n", b"abc"), 400, id="content_length_negative"),
    pytest.param(_post(b"Content-Length: 0x10\r\n", b"a" * 16), 400, id="content_length_hex"),
    pytest.param(_post(b"Content-Length: 18446744073709551617\r\n", b"abc"), 400,
                 id="content_length_overflowing_64_bits"),
    pytest.param(_post(b"Content-Length: 99999999999999999999999999999999\r\n", b"abc"), 400,
                 id="content_length_huge"),
    pytest.param(_post(b"Content-Length: 1 0\r\n", b"a" * 10), 400, id="content_length_with_inner_space"),
    pytest.param(_post(b"Content-Length: 3a\r\n", b"abc"), 400, id="content_length_with_letter"),
    pytest.param(_post(b"Content-Length: \r\n", b""), 400, id="content_length_empty"),
    pytest.param(_post(b"Content-Length:\x0b3\r\n", b"abc"), 400, id="content_length_after_vertical_tab"),
    # Transfer codings. Chunked not final: the length is unknowable, MUST 400 (RFC 9112 §6.3 rule 4).
    # Chunked final after a coding we do not know: 501 (RFC 9112 §6.1).
    pytest.param(_post(b"Transfer-Encoding: gzip\r\n", b"abc"), 400, id="transfer_encoding_gzip_alone"),
    pytest.param(_post(b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED_EMPTY), 501,
                 id="transfer_encoding_gzip_then_chunked_is_501"),
    pytest.param(_post(b"Transfer-Encoding: chunked, chunked\r\n", CHUNKED_EMPTY), 400,
                 id="transfer_encoding_chunked_twice"),
    pytest.param(_post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_EMPTY), 400,
                 id="transfer_encoding_chunked_in_two_fields"),
    pytest.param(_post(b"Transfer-Encoding: chunked, identity\r\n", CHUNKED_EMPTY), 400,
                 id="transfer_encoding_chunked_not_final"),
    pytest.param(_post(b"Transfer-Encoding: xchunked\r\n", CHUNKED_EMPTY), 400, id="transfer_encoding_xchunked"),
    pytest.param(_post(b'Transfer-Encoding: "chunked"\r\n', CHUNKED_EMPTY), 400, id="transfer_encoding_quoted"),
    pytest.param(_post(b"Transfer-Encoding:\x0bchunked\r\n", CHUNKED_EMPTY), 400,
                 id="transfer_encoding_vertical_tab"),
    pytest.param(_post(b"Transfer-Encoding:\r\n chunked\r\n", CHUNKED_EMPTY), 400,
                 id="transfer_encoding_obs_fold"),
    pytest.param(_post(b"X-Before: a\r\n Transfer-Encoding: chunked\r\n", CHUNKED_EMPTY), 400,
                 id="transfer_encoding_name_with_leading_space"),
    pytest.param(b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: gw.test\r\n\r\n" + CHUNKED_EMPTY, 400,
                 id="whitespace_line_right_after_request_line"),
    pytest.param(_post(b"Transfer-Encoding : chunked\r\n", CHUNKED_EMPTY), 400,
                 id="transfer_encoding_space_before_colon"),
    pytest.param(_post(b"Transfer-Encoding: chunked\r\n", CHUNKED_EMPTY, version=b"1.0"), 400,
                 id="transfer_encoding_on_http_1_0"),
    # obs-fold anywhere (SPEC: refused).
    pytest.param(_get(b"X-Folded: a\r\n b\r\n"), 400, id="obs_fold_with_space"),
    pytest.param(_get(b"X-Folded: a\r\n\tb\r\n"), 400, id="obs_fold_with_tab"),
    # Bare LF and bare CR (SPEC: refused; RFC 9112 §2.2).
    pytest.param(b"GET / HTTP/1.1\nHost: gw.test\r\n\r\n", 400, id="bare_lf_after_request_line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw.test\nX-A: b\r\n\r\n", 400, id="bare_lf_after_header"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw.test\r\n\n", 400, id="bare_lf_ending_head"),
    pytest.param(b"GET / HTTP/1.1\rHost: gw.test\r\n\r\n", 400, id="bare_cr_after_request_line"),
    pytest.param(b"GET /\r HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400, id="bare_cr_in_target"),
    pytest.param(_get(b"X-A: b\rc\r\n"), 400, id="bare_cr_in_header_value"),
    pytest.param(_get(b"X-A\r: b\r\n"), 400, id="bare_cr_in_header_name"),
    # NUL.
    pytest.param(_get(b"X-A: b\x00c\r\n"), 400, id="nul_in_header_value"),
    pytest.param(_get(target=b"/a\x00b"), 400, id="nul_in_target"),
    pytest.param(_get(target=b"/a%00b"), 400, id="encoded_nul_in_path"),
    # Invalid field names (RFC 9112 §5.1: whitespace before the colon MUST get 400).
    pytest.param(_get(b"X-A : b\r\n"), 400, id="header_name_space_before_colon"),
    pytest.param(_get(b"X-A\t: b\r\n"), 400, id="header_name_tab_before_colon"),
    pytest.param(_get(b"X(A: b\r\n"), 400, id="header_name_with_parenthesis"),
    pytest.param(_get(b": b\r\n"), 400, id="header_name_empty"),
    pytest.param(_get(b"X-\xc3\xa9: b\r\n"), 400, id="header_name_non_ascii"),
    pytest.param(_get(b"X-A b\r\n"), 400, id="header_line_without_colon"),
    # Host (RFC 9112 §3.2: missing on 1.1, repeated, or invalid: MUST 400).
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="missing_host_on_http_1_1"),
    pytest.param(_get(b"Host: gw.test\r\n"), 400, id="duplicate_host_same_value"),
    pytest.param(_get(b"Host: other.test\r\n"), 400, id="duplicate_host_different_values"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: user@gw.test\r\n\r\n", 400, id="host_with_userinfo"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw.test/path\r\n\r\n", 400, id="host_with_path"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw test\r\n\r\n", 400, id="host_with_space"),
    # Absolute form: not an open proxy.
    pytest.param(b"GET http://undeclared.example/ HTTP/1.1\r\nHost: undeclared.example\r\n\r\n", 400,
                 id="absolute_form_to_undeclared_host"),
    pytest.param(b"GET http://undeclared.example/ HTTP/1.1\r\nHost: " + DECLARED_HOST.encode() + b"\r\n\r\n", 400,
                 id="absolute_form_to_undeclared_host_with_declared_host_header"),
    # CONNECT.
    pytest.param(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n", 400, id="connect"),
    # Chunked bodies (RFC 9112 §7.1).
    pytest.param(_chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_not_hex"),
    pytest.param(_chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_with_0x_prefix"),
    pytest.param(_chunked(b"+5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_with_plus"),
    pytest.param(_chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_negative"),
    pytest.param(_chunked(b"\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_empty"),
    pytest.param(_chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_with_leading_space"),
    pytest.param(_chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_overflowing_64_bits"),
    pytest.param(_chunked(b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_size_huge_overflow"),
    pytest.param(_chunked(b"5;ext\rx\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_extension_with_bare_cr"),
    pytest.param(_chunked(b"5;ext\nhello\r\n0\r\n\r\n"), 400, id="chunk_extension_ended_by_bare_lf"),
    pytest.param(_chunked(b"5\r\nhelloXX0\r\n\r\n"), 400, id="chunk_data_without_crlf"),
    pytest.param(_chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400, id="chunk_data_longer_than_its_size"),
    pytest.param(_chunked(b"5\nhello\n0\n\n"), 400, id="chunk_lines_ended_by_bare_lf"),
    pytest.param(_chunked(b"5\r\nhello\r\n0\r\nBad Trailer: x\r\n\r\n"), 400, id="trailer_with_invalid_name"),
    # The request target and line.
    pytest.param(_get(target=b"/x#frag"), 400, id="fragment_in_target"),
    pytest.param(_get(target=b"/x?a=1#frag"), 400, id="fragment_after_query"),
    pytest.param(_get(request_line=b"GET / HTTP/1.1 "), 400, id="request_line_trailing_space"),
    pytest.param(_get(request_line=b"GET\t/ HTTP/1.1"), 400, id="request_line_tab_separator"),
    pytest.param(_get(request_line=b"GET /"), 400, id="request_line_without_version"),
    pytest.param(_get(request_line=b"GET / HTTP/2.0"), (400, 505), id="http_2_0_on_http1_listener"),
    pytest.param(_get(request_line=b"GET / HTTP/1.2"), (400, 505), id="http_1_2"),
    pytest.param(_get(request_line=b"GET / http/1.1"), 400, id="http_version_lowercase"),
    pytest.param(_get(request_line=b"get / HTTP/1.1"), 400, id="lowercase_method"),
    pytest.param(_get(target=b"x"), 400, id="target_without_leading_slash"),
    pytest.param(_get(target=b"../admin"), 400, id="target_relative_dot_dot"),
    pytest.param(_get(target=b"*"), 400, id="asterisk_form_on_get"),
]


@pytest.mark.parametrize(("request_bytes", "status"), REFUSED)
def test_malformed_request_is_refused_closed_and_never_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream, request_bytes: bytes, status: int | tuple[int, ...]
) -> None:
    assert_refused(gateway, upstream, request_bytes, status)


# --- limits -------------------------------------------------------------------------------------------


def test_head_larger_than_max_header_bytes_gets_431(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    assert_refused(gateway, upstream, _get(b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 500) + b"\r\n"), 431)


def test_many_medium_headers_adding_up_past_max_header_bytes_get_431(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    headers = b"".join(b"X-Medium-%d: %s\r\n" % (i, b"m" * 200) for i in range(12))  # 12 fields, ~2.6 KiB
    assert_refused(gateway, upstream, _get(headers), 431)


def test_more_than_max_headers_gets_431(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    assert_refused(gateway, upstream, _get(headers), 431)


def test_exactly_max_headers_is_accepted(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 1))  # plus Host: exactly the limit
    with Client(gateway.port) as client:
        client.send(_get(headers))
        assert client.read_response().status == 200
    assert len(upstream.requests) == 1


def test_target_longer_than_max_uri_bytes_gets_414(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    assert_refused(gateway, upstream, _get(target=b"/" + b"a" * (MAX_URI_BYTES + 100)), 414)


def test_target_just_under_max_uri_bytes_is_accepted(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    target = b"/" + b"a" * (MAX_URI_BYTES - 24)
    reply = converse(gateway.port, _get(b"Connection: close\r\n", target=target))
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [r.target for r in upstream.requests] == [target.decode()]


def _send_head_expect_413(gateway: RunningGateway, upstream: RecordingUpstream, head: bytes) -> None:
    with Client(gateway.port) as client:
        client.send(head)  # the body is never sent: the 413 must come without it
        response = client.read_response(timeout=2.0)
        assert_gateway_error(response, 413, upstream)
        closed, _ = client.wait_closed(2.0)
        assert closed, "the connection stayed open after a 413"
    assert_nothing_forwarded(upstream)


def test_content_length_above_max_body_bytes_gets_413_before_the_body_is_sent(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    _send_head_expect_413(
        gateway, upstream, b"POST / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
    )


def test_content_length_above_route_body_limit_gets_413_before_the_body_is_sent(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    _send_head_expect_413(
        gateway, upstream,
        b"POST /small HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % (ROUTE_BODY_LIMIT + 1),
    )


def test_expect_100_continue_with_too_large_body_gets_413_and_no_100(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    head = b"POST / HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    with Client(gateway.port) as client:
        client.send(head)
        response = client.read_response(timeout=2.0)
        assert response.status != 100, "100 Continue invited a body the gateway will refuse"
        assert_gateway_error(response, 413, upstream)
    assert_nothing_forwarded(upstream)


@pytest.mark.parametrize(("target", "limit"), [("/", MAX_BODY_BYTES), ("/small", ROUTE_BODY_LIMIT)],
                         ids=["server_limit", "route_body_limit"])
def test_body_of_exactly_the_limit_is_forwarded_whole(
    gateway: RunningGateway, upstream: RecordingUpstream, target: str, limit: int
) -> None:
    body = bytes(range(256)) * (limit // 256) + b"z" * (limit % 256)
    request = (b"POST %s HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
               % (target.encode(), limit)) + body
    reply = converse(gateway.port, request)
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [r.body for r in upstream.requests] == [body]


@pytest.mark.parametrize(("target", "limit"), [("/", MAX_BODY_BYTES), ("/small", ROUTE_BODY_LIMIT)],
                         ids=["server_limit", "route_body_limit"])
def test_chunked_body_crossing_the_limit_gets_413_as_soon_as_crossed(
    gateway: RunningGateway, upstream: RecordingUpstream, target: str, limit: int
) -> None:
    first = b"a" * (limit - 10)
    second = b"b" * 20  # crosses the limit; no last chunk is ever sent
    with Client(gateway.port) as client:
        client.send(b"POST %s HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n" % target.encode())
        client.send(b"%x\r\n%s\r\n" % (len(first), first))
        time.sleep(0.1)
        client.send(b"%x\r\n%s\r\n" % (len(second), second))
        response = client.read_response(timeout=2.0)
        assert_gateway_error(response, 413, upstream)
        closed, _ = client.wait_closed(2.0)
        assert closed, "the connection stayed open after a 413"
    assert_nothing_forwarded(upstream)  # the upstream never saw a complete request


def test_chunked_body_of_exactly_the_limit_is_forwarded_whole(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    body = b"c" * MAX_BODY_BYTES
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:300], body[300:]))
    reply = converse(gateway.port, _post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n", chunks + b"0\r\n\r\n"))
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [r.body for r in upstream.requests] == [body]


# --- timeouts -----------------------------------------------------------------------------------------


def test_half_a_head_then_silence_gets_408_within_read_header_timeout(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    reply = converse(gateway.port, b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-Half", timeout=READ_HEADER_TIMEOUT + 3)
    assert reply.closed, "a stalled head was never timed out"
    assert READ_HEADER_TIMEOUT - 0.3 <= reply.elapsed <= READ_HEADER_TIMEOUT + 1.5, reply.elapsed
    responses = parse_responses(reply.data)
    assert len(responses) == 1, reply.data
    assert_gateway_error(responses[0], 408, upstream)
    assert_nothing_forwarded(upstream)


def test_head_trickled_byte_by_byte_still_gets_408_at_read_header_timeout(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    # A slowloris client: every byte restarts no clock. The whole head must arrive within read_header.
    head = b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-Slow: " + b"s" * 40 + b"\r\n\r\n"
    with Client(gateway.port, timeout=READ_HEADER_TIMEOUT + 3) as client:
        start = time.monotonic()
        for byte in head:
            try:
                client.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if client._fill(time.monotonic() + 0.1):  # anything said back ends the trickle
                break
            if time.monotonic() - start > READ_HEADER_TIMEOUT + 2.5:
                break
        closed, _ = client.wait_closed(READ_HEADER_TIMEOUT + 3)
        elapsed = time.monotonic() - start
        assert closed
        assert elapsed <= READ_HEADER_TIMEOUT + 1.5, elapsed
        responses = parse_responses(client.buffer)
    assert len(responses) == 1, client.buffer
    assert_gateway_error(responses[0], 408, upstream)
    assert_nothing_forwarded(upstream)


def test_connection_that_sends_nothing_is_closed_after_read_header_timeout(gateway: RunningGateway) -> None:
    reply = converse(gateway.port, b"", timeout=READ_HEADER_TIMEOUT + 3)
    assert reply.closed
    assert reply.elapsed <= READ_HEADER_TIMEOUT + 1.5, reply.elapsed


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    with Client(gateway.port, timeout=IDLE_TIMEOUT + 3) as client:
        client.send(_get())
        assert client.read_response().status == 200
        start = time.monotonic()
        closed, said = client.wait_closed(IDLE_TIMEOUT + 2)
        waited = time.monotonic() - start
    assert closed, "an idle keep-alive connection was never closed"
    assert IDLE_TIMEOUT - 0.3 <= waited <= IDLE_TIMEOUT + 1.5, waited
    assert said == b"", f"an idle close should be silent, got {said!r}"


def test_keep_alive_connection_used_within_idle_timeout_stays_open(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    with Client(gateway.port) as client:
        for i in range(3):
            client.send(_get(target=b"/again-%d" % i))
            assert client.read_response().status == 200
            time.sleep(IDLE_TIMEOUT / 2)
    assert [r.target for r in upstream.requests] == ["/again-0", "/again-1", "/again-2"]


# --- valid framing that MUST work ---------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"GET  /spaced HTTP/1.1", b"GET /spaced  HTTP/1.1"])
def test_extra_spaces_in_the_request_line_are_parsed_as_word_boundaries_and_forwarded_canonical(
    gateway: RunningGateway, upstream: RecordingUpstream, line: bytes
) -> None:
    # RFC 9112 §3 lets a recipient parse the request line on whitespace boundaries (llhttp does); the
    # gateway writes its own single-spaced line upstream, so nothing ambiguous is passed on.
    reply = converse(gateway.port, line + b"\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [r.target for r in upstream.requests] == ["/spaced"]


def test_http_1_0_without_host_is_served(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    reply = converse(gateway.port, b"GET /old HTTP/1.0\r\n\r\n")
    responses = parse_responses(reply.data)
    assert [r.status for r in responses] == [200]
    assert reply.closed, "HTTP/1.0 without keep-alive: the connection closes after the response"
    assert [r.target for r in upstream.requests] == ["/old"]


def test_absolute_form_to_declared_host_is_served_with_host_replaced_by_the_authority(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    request = (b"GET http://" + DECLARED_HOST.encode() + b"/things?x=1 HTTP/1.1\r\n"
               b"Host: other.test\r\nConnection: close\r\n\r\n")
    reply = converse(gateway.port, request)
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert len(upstream.requests) == 1
    received = upstream.requests[0]
    assert received.target == "/things?x=1", "forwarded in origin form"
    assert received.header_values("host") == [DECLARED_HOST]


def test_uppercase_host_header_name_counts_as_host(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    reply = converse(gateway.port, b"GET /case HTTP/1.1\r\nHOST: gw.test\r\nConnection: close\r\n\r\n")
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [r.target for r in upstream.requests] == ["/case"]


def test_chunked_body_with_extensions_is_forwarded_as_the_decoded_bytes(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    body = b'5;name=value\r\nhello\r\n6;flag;q="a;b"\r\n world\r\n000A\r\n0123456789\r\n0\r\n\r\n'
    reply = converse(gateway.port, _post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n", body))
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [r.body for r in upstream.requests] == [b"hello world0123456789"]


def test_chunked_body_with_tab_before_the_coding_is_still_chunked(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    reply = converse(gateway.port, _post(b"Transfer-Encoding:\tChunked \r\nConnection: close\r\n",
                                         b"3\r\nabc\r\n0\r\n\r\n"))
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [r.body for r in upstream.requests] == [b"abc"]


def test_trailers_are_accepted_and_not_forwarded(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    body = b"5\r\nhello\r\n0\r\nX-Trailer: secret\r\nX-Checksum: 42\r\n\r\n"
    reply = converse(gateway.port, _post(b"Transfer-Encoding: chunked\r\nTrailer: X-Trailer\r\nConnection: close\r\n",
                                         body))
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert len(upstream.requests) == 1
    received = upstream.requests[0]
    assert received.body == b"hello"
    names = {name for name, _ in received.headers}
    assert not names & {"x-trailer", "x-checksum", "trailer"}, received.headers


def test_expect_100_continue_gets_100_then_the_final_response(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    with Client(gateway.port) as client:
        client.send(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
        interim = client.read_response(timeout=2.0)
        assert interim.status == 100
        assert interim.raw.startswith(b"HTTP/1.1 100 Continue\r\n")
        client.send(b"hello world")
        final = client.read_response()
        assert final.status == 200
        assert final.json()["body_length"] == 11
    assert [(r.target, r.body) for r in upstream.requests] == [("/upload", b"hello world")]


def test_pipelined_requests_are_answered_in_order(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    requests = (
        b"GET /first HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /third HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /fourth HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    )
    reply = converse(gateway.port, requests)
    responses = parse_responses(reply.data)
    assert [r.status for r in responses] == [200, 200, 200, 200]
    assert [r.json()["target"] for r in responses] == ["/first", "/second", "/third", "/fourth"]
    assert [(r.target, r.body) for r in upstream.requests] == [
        ("/first", b""), ("/second", b"abc"), ("/third", b"de"), ("/fourth", b""),
    ]
    assert reply.closed


def test_http_1_0_keep_alive_keeps_the_connection_and_plain_1_0_closes_it(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    with Client(gateway.port) as client:
        client.send(b"GET /ka-1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = client.read_response()
        assert first.status == 200
        assert (first.header("connection") or "").lower() == "keep-alive"
        client.send(b"GET /ka-2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert client.read_response().status == 200
        client.send(b"GET /ka-3 HTTP/1.0\r\n\r\n")
        assert client.read_response().status == 200
        closed, _ = client.wait_closed(2.0)
        assert closed, "HTTP/1.0 without keep-alive: the connection closes after the response"
    assert [r.target for r in upstream.requests] == ["/ka-1", "/ka-2", "/ka-3"]


def test_head_response_has_no_body_and_the_connection_stays_usable(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    reply = converse(gateway.port, b"HEAD /headed HTTP/1.1\r\nHost: gw.test\r\n\r\n"
                                   b"GET /after-head HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    responses = parse_responses(reply.data, head_requests=(0,))
    assert [r.status for r in responses] == [200, 200]
    assert responses[1].json()["target"] == "/after-head", "bytes of a HEAD body leaked into the next response"
    assert [(r.method, r.target) for r in upstream.requests] == [("HEAD", "/headed"), ("GET", "/after-head")]


def test_connection_close_is_honoured(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    reply = converse(gateway.port, b"GET /only HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n" + FOLLOW_UP)
    responses = parse_responses(reply.data)
    assert [r.status for r in responses] == [200]
    assert (responses[0].header("connection") or "").lower() == "close"
    assert reply.closed
    assert [r.target for r in upstream.requests] == ["/only"]


def test_get_with_content_length_body_forwards_the_body(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    reply = converse(gateway.port, b"GET /with-body HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n"
                                   b"Connection: close\r\n\r\nbody")
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [(r.target, r.body) for r in upstream.requests] == [("/with-body", b"body")]


def test_content_length_with_leading_zeros_frames_the_body(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    reply = converse(gateway.port, _post(b"Content-Length: 003\r\nConnection: close\r\n", b"abc"))
    assert [r.status for r in parse_responses(reply.data)] == [200]
    assert [r.body for r in upstream.requests] == [b"abc"]
