"""gRPC and HTTP/2 header rules (no I/O): grpc-timeout, grpc-status, and the exchange's head as HTTP/2 fields."""

from __future__ import annotations

import pytest

from frontgate.protocol.grpc_status import status_code, status_name
from frontgate.protocol.grpc_timeout import format_timeout, parse_timeout
from frontgate.upstream.h2_head import request_fields, response_fields, trailer_lines

HEAD = (b"POST /pkg.Svc/Do?x=1 HTTP/1.1\r\nhost: api.example.com\r\nx-request-deadline: 950\r\n"
        b"content-type: application/grpc\r\nconnection: keep-alive\r\nte: trailers\r\nx-user: 7\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


@pytest.mark.parametrize(("milliseconds", "header"), [
    (950, b"950m"), (0, b"0m"), (99_999_999, b"99999999m"), (100_000_000, b"100000S"),
    (10**12, b"277777H"),
])
def test_grpc_timeout_is_written_in_milliseconds_while_they_fit_eight_digits(milliseconds: int, header: bytes) -> None:
    assert format_timeout(milliseconds) == header
    seconds = parse_timeout(header)
    assert seconds is not None and seconds <= milliseconds / 1000 + 1e-9  # never more time than the gateway gives


@pytest.mark.parametrize("value", [b"", b"m", b"10", b"123456789m", b"10x", b"-5m", b"1.5S"])
def test_a_malformed_grpc_timeout_is_refused(value: bytes) -> None:
    assert parse_timeout(value) is None


def test_grpc_status_codes_outside_the_17_known_ones_are_unknown() -> None:
    assert (status_code(b"5"), status_name(5)) == (5, "NOT_FOUND")
    assert status_code(b"99") == status_code(b"x") == 2 and status_name(99) == "UNKNOWN"


def test_the_head_becomes_pseudo_headers_and_the_deadline_becomes_grpc_timeout() -> None:
    request = request_fields(HEAD, b"http", grpc=True, chunked_body=True)
    assert request.fields == [
        (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"api.example.com"),
        (b":path", b"/pkg.Svc/Do?x=1"), (b"te", b"trailers"), (b"grpc-timeout", b"950m"),
        (b"content-type", b"application/grpc"), (b"x-user", b"7"),
    ]
    assert request.has_body


def test_a_plain_http2_upstream_keeps_the_deadline_header_and_gets_no_te() -> None:
    request = request_fields(HEAD.replace(b"te: trailers\r\n", b""), b"https", grpc=False, chunked_body=True)
    names = [name for name, _ in request.fields]
    assert b"x-request-deadline" in names and b"te" not in names and b"grpc-timeout" not in names
    assert (b":scheme", b"https") in request.fields


@pytest.mark.parametrize(("client", "sent"), [(b"100m", b"100m"), (b"2S", b"950m"), (b"junk", b"950m")])
def test_the_shorter_of_the_clients_and_the_gateways_deadline_is_sent(client: bytes, sent: bytes) -> None:
    head = HEAD.replace(b"x-user: 7\r\n", b"grpc-timeout: " + client + b"\r\n")
    fields = dict(request_fields(head, b"http", grpc=True, chunked_body=True).fields)
    assert fields[b"grpc-timeout"] == sent


@pytest.mark.parametrize(("framing", "has_body"), [
    (b"content-length: 0\r\n", False), (b"content-length: 12\r\n", True), (b"", False)])
def test_a_request_without_body_ends_the_stream_with_its_headers(framing: bytes, has_body: bool) -> None:
    head = b"GET / HTTP/1.1\r\nhost: h\r\nx-request-deadline: 5\r\n" + framing + b"\r\n"
    assert request_fields(head, b"http", grpc=False, chunked_body=False).has_body is has_body


def test_response_fields_become_lines_without_pseudo_headers_or_framing() -> None:
    response = response_fields([(b":status", b"200"), (b"content-type", b"application/grpc"),
                                (b"content-length", b"12"), (b"date", b"x"), (b"grpc-status", b"0")])
    assert (response.status, response.content_length, response.has_date, response.grpc_status) == (200, 12, True, 0)
    assert response.lines == [b"content-type: application/grpc\r\n", b"date: x\r\n", b"grpc-status: 0\r\n"]
    lines, grpc_status = trailer_lines([(b"grpc-status", b"5"), (b"grpc-message", b"gone")])
    assert grpc_status == 5 and lines == [b"grpc-status: 5\r\n", b"grpc-message: gone\r\n"]
