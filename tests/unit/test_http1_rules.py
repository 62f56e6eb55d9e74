"""The HTTP/1.1 rules of frontgate.protocol.http1, without sockets: what a request head must look like
(RFC 9112 §3.2, §6, §9.3; RFC 9110 §7.6.1, §10.1.1) and how the gateway writes heads, chunks and errors."""

from __future__ import annotations

import json

import httptools
import pytest

from frontgate.errors import BadRequest, HttpError, NotImplementedByGateway, PayloadTooLarge
from frontgate.protocol.http1 import (
    CONTINUE_100,
    HOP_BY_HOP,
    LAST_CHUNK,
    RequestFraming,
    chunk,
    date_line,
    error_body,
    forwarded_response_head,
    header_tokens,
    host_without_port,
    inspect_request_head,
    render_response,
    split_lines,
    status_line,
)

Headers = list[tuple[bytes, bytes]]
DATE = b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"


def head(*fields: tuple[str, str], host: str | None = "gw.test") -> Headers:
    """Header fields as the connection hands them over: names lowercased, values raw."""
    headers = [(b"host", host.encode())] if host is not None else []
    return headers + [(name.lower().encode(), value.encode("latin-1")) for name, value in fields]


# --- header_tokens ------------------------------------------------------------------------------------


def test_header_tokens_split_on_commas_trim_and_lowercase() -> None:
    assert header_tokens(b" Keep-Alive ,Upgrade,\tX-Foo ") == [b"keep-alive", b"upgrade", b"x-foo"]


def test_header_tokens_ignore_empty_list_elements() -> None:
    # RFC 9110 §5.6.1: a recipient MUST accept (and ignore) empty list elements.
    assert header_tokens(b",, chunked , ,") == [b"chunked"]
    assert header_tokens(b"") == []


# --- Host (RFC 9112 §3.2) -----------------------------------------------------------------------------


def test_http_1_1_request_without_host_is_bad_request() -> None:
    with pytest.raises(BadRequest) as caught:
        inspect_request_head(head(host=None), "1.1")
    assert caught.value.status == 400 and caught.value.close_connection


def test_http_1_0_request_without_host_is_accepted() -> None:
    framing = inspect_request_head(head(host=None), "1.0")
    assert framing.host is None


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("second", ["gw.test", "other.test"], ids=["same_value", "different_value"])
def test_more_than_one_host_field_is_bad_request(version: str, second: str) -> None:
    with pytest.raises(BadRequest):
        inspect_request_head(head(("Host", second)), version)


@pytest.mark.parametrize(
    "host",
    ["", "gw test", "user@gw.test", "gw.test/path", "gw.test?q", "gw.test#f", "gw.test:80x", "gw.test:123456",
     ":8080", "[::1", "[::1]x", "[::1]:", "gw.test:80:81", "a" * 256, "gw.test\\evil"],
)
def test_malformed_host_value_is_bad_request(host: str) -> None:
    with pytest.raises(BadRequest):
        inspect_request_head(head(host=host), "1.1")


@pytest.mark.parametrize(
    "host", ["gw.test", "GW.Test:8080", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:8443", "xn--bcher-kva.example",
             "localhost:1"],
)
def test_well_formed_host_value_is_accepted_as_sent(host: str) -> None:
    assert inspect_request_head(head(host=host), "1.1").host == host.encode()


@pytest.mark.parametrize(
    ("host", "expected"),
    [(b"GW.Test:8080", "gw.test"), (b"gw.test", "gw.test"), (b"[::1]:8443", "[::1]"), (b"[::1]", "[::1]"),
     (b"10.0.0.1:80", "10.0.0.1")],
)
def test_host_without_port_is_the_lowercased_name(host: bytes, expected: str) -> None:
    assert host_without_port(host) == expected


# --- message body length (RFC 9112 §6) ----------------------------------------------------------------


def test_no_length_fields_means_no_body() -> None:
    framing = inspect_request_head(head(), "1.1")
    assert framing.content_length is None and not framing.chunked


@pytest.mark.parametrize(("value", "length"), [("0", 0), ("3", 3), ("003", 3), ("10485760", 10485760)])
def test_content_length_is_read_as_a_decimal_number(value: str, length: int) -> None:
    framing = inspect_request_head(head(("Content-Length", value)), "1.1")
    assert framing.content_length == length and not framing.chunked


@pytest.mark.parametrize("value", ["chunked", "Chunked", "CHUNKED", " chunked ", ",chunked"])
def test_chunked_coding_is_recognised_case_insensitively(value: str) -> None:
    assert inspect_request_head(head(("Transfer-Encoding", value)), "1.1").chunked


def test_transfer_encoding_on_http_1_0_is_bad_request() -> None:
    # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
    with pytest.raises(BadRequest):
        inspect_request_head(head(("Transfer-Encoding", "chunked")), "1.0")


def test_unknown_coding_before_chunked_is_not_implemented() -> None:
    # RFC 9112 §6.1: a transfer coding the server does not understand: 501, and the length is still known.
    with pytest.raises(NotImplementedByGateway) as caught:
        inspect_request_head(head(("Transfer-Encoding", "gzip, chunked")), "1.1")
    assert caught.value.status == 501 and caught.value.close_connection


@pytest.mark.parametrize("value", ["gzip", "xchunked", "chunked, gzip", "identity", '"chunked"'])
def test_transfer_encoding_without_final_chunked_is_bad_request(value: str) -> None:
    # RFC 9112 §6.3 rule 4: chunked not the final coding in a request: the length cannot be determined,
    # the server MUST respond 400 and close.
    with pytest.raises(BadRequest):
        inspect_request_head(head(("Transfer-Encoding", value)), "1.1")


# --- rules the module leaves to llhttp ----------------------------------------------------------------
# The module docstring delegates these to httptools (llhttp, strict). They are checked here through the same
# composition the connection uses, without sockets: llhttp parses, and at the end of the head
# inspect_request_head runs on the lowercased fields. A parser error counts as 400, as in the connection.


class _HeadCollector:
    def __init__(self, parser_box: list[httptools.HttpRequestParser]) -> None:
        self.parser_box = parser_box
        self.headers: Headers = []
        self.framing: RequestFraming | None = None
        self.error: HttpError | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        try:
            self.framing = inspect_request_head(self.headers, self.parser_box[0].get_http_version())
        except HttpError as error:
            self.error = error
            raise


def parse_head(raw: bytes) -> RequestFraming:
    """Parse a request head (and whatever body follows) as the gateway does; raise the HttpError it answers."""
    box: list[httptools.HttpRequestParser] = []
    collector = _HeadCollector(box)
    parser = httptools.HttpRequestParser(collector)
    box.append(parser)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserCallbackError:
        assert collector.error is not None
        raise collector.error from None
    except httptools.HttpParserError:
        if collector.error is not None:
            raise collector.error from None
        raise BadRequest("parser") from None
    assert collector.framing is not None, "the head was not complete"
    return collector.framing


def post(fields: bytes, body: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: gw.test\r\n" + fields + b"\r\n" + body


def test_parse_head_helper_accepts_a_plain_request() -> None:
    framing = parse_head(post(b"Content-Length: 3\r\n", b"abc"))
    assert framing.content_length == 3 and framing.host == b"gw.test"


@pytest.mark.parametrize(
    "fields",
    [b"Transfer-Encoding: chunked, chunked\r\n", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"],
    ids=["one_field", "two_fields"],
)
def test_chunked_applied_twice_is_bad_request(fields: bytes) -> None:
    # RFC 9112 §6.1: chunked MUST NOT be applied more than once; such a body cannot be framed: 400.
    with pytest.raises(BadRequest):
        parse_head(post(fields, b"0\r\n\r\n"))


@pytest.mark.parametrize(
    "fields",
    [b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"],
    ids=["cl_then_te", "te_then_cl"],
)
def test_content_length_with_transfer_encoding_is_bad_request(fields: bytes) -> None:
    # RFC 9112 §6.1: a server MAY reject such a request, and MUST close after it; SPEC §3 rejects it.
    with pytest.raises(BadRequest):
        parse_head(post(fields, b"0\r\n\r\n"))


@pytest.mark.parametrize(
    "fields",
    [b"Content-Length: 3\r\nContent-Length: 3\r\n", b"Content-Length: 3\r\nContent-Length: 4\r\n"],
    ids=["same_value", "different_values"],
)
def test_repeated_content_length_is_bad_request(fields: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(post(fields, b"abcd"))


@pytest.mark.parametrize(
    "value", [b"3, 3", b"+3", b"-1", b"0x10", b"1 0", b"", b"3a", b"3_0", "\u0661".encode(), b"\x0b3"]
)
def test_malformed_content_length_is_bad_request(value: bytes) -> None:
    # RFC 9112 §6.3 rule 5: an invalid Content-Length MUST get 400, never Python's lenient int() reading
    # ("+3", "3_0" and Unicode digits all parse there).
    with pytest.raises(BadRequest):
        parse_head(post(b"Content-Length: " + value + b"\r\n", b"abc"))


@pytest.mark.parametrize("value", [b"gzip", b"xchunked", b"chunked, gzip", b"identity"])
def test_parsed_transfer_encoding_without_final_chunked_is_bad_request(value: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(post(b"Transfer-Encoding: " + value + b"\r\n", b"abc"))


def test_parsed_gzip_then_chunked_is_not_implemented() -> None:
    with pytest.raises(NotImplementedByGateway):
        parse_head(post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"))


# --- Connection and keep-alive (RFC 9112 §9.3) --------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),
        ("1.1", "close", False),
        ("1.1", "Close", False),
        ("1.1", "keep-alive, close", False),
        ("1.1", "upgrade", True),
        ("1.0", None, False),
        ("1.0", "keep-alive", True),
        ("1.0", "Keep-Alive", True),
        ("1.0", "close", False),
        ("1.0", "keep-alive, close", False),
    ],
)
def test_persistence_follows_the_version_and_connection_options(
    version: str, connection: str | None, keep_alive: bool
) -> None:
    fields = [("Connection", connection)] if connection is not None else []
    assert inspect_request_head(head(*fields), version).keep_alive is keep_alive


def test_connection_options_from_every_field_are_collected_lowercased() -> None:
    framing = inspect_request_head(head(("Connection", "X-Hop, Keep-Alive"), ("Connection", "TE")), "1.1")
    assert framing.connection_tokens == frozenset({b"x-hop", b"keep-alive", b"te"})


# --- Expect (RFC 9110 §10.1.1) ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["100-continue", "100-Continue"])
def test_expect_100_continue_is_recognised(value: str) -> None:
    framing = inspect_request_head(head(("Expect", value), ("Content-Length", "5")), "1.1")
    assert framing.expect_continue


def test_no_expect_means_no_100_continue() -> None:
    assert not inspect_request_head(head(("Content-Length", "5")), "1.1").expect_continue


def test_other_expectation_fails_with_417() -> None:
    with pytest.raises(HttpError) as caught:
        inspect_request_head(head(("Expect", "something-else")), "1.1")
    assert caught.value.status == 417


# --- hop-by-hop fields (RFC 9110 §7.6.1) --------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"]
)
def test_hop_by_hop_fields_are_listed(name: bytes) -> None:
    assert name in HOP_BY_HOP


@pytest.mark.parametrize("name", [b"content-type", b"authorization", b"cookie", b"x-request-id", b"accept"])
def test_end_to_end_fields_are_not_hop_by_hop(name: bytes) -> None:
    assert name not in HOP_BY_HOP


# --- what the gateway writes --------------------------------------------------------------------------


def test_status_line_carries_the_reason_phrase() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(431) == b"HTTP/1.1 431 Request Header Fields Too Large\r\n"


def test_status_line_for_an_unknown_status_has_an_empty_reason() -> None:
    assert status_line(599) == b"HTTP/1.1 599 \r\n"


@pytest.mark.parametrize(
    ("data", "wire"),
    [(b"hello", b"5\r\nhello\r\n"), (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
     (b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n")],
)
def test_chunk_frames_data_with_its_hex_size(data: bytes, wire: bytes) -> None:
    assert chunk(data) == wire


def test_last_chunk_and_100_continue_are_exact() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert CONTINUE_100 == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_error_body_is_the_spec_json_and_nothing_else() -> None:
    body = error_body(PayloadTooLarge(), "req-1")
    assert json.loads(body) == {"error": "payload_too_large", "message": PayloadTooLarge.message,
                                "request_id": "req-1"}


def test_error_body_escapes_a_message_with_quotes() -> None:
    body = error_body(BadRequest('the "Host" header is bad\n'), "r")
    assert json.loads(body)["message"] == 'the "Host" header is bad\n'


def _split(response: bytes) -> tuple[list[bytes], bytes]:
    head_bytes, _, body = response.partition(b"\r\n\r\n")
    return head_bytes.split(b"\r\n"), body


def test_render_response_frames_the_body_with_content_length() -> None:
    raw = render_response(404, b'{"a":1}', [(b"x-id", b"7")], b"application/json", close=False, date_line=DATE)
    lines, body = _split(raw)
    assert lines[0] == b"HTTP/1.1 404 Not Found"
    assert set(lines[1:]) == {DATE.rstrip(), b"x-id: 7", b"content-type: application/json", b"content-length: 7"}
    assert body == b'{"a":1}'


def test_render_response_announces_the_close() -> None:
    lines, _ = _split(render_response(400, b"{}", [], b"application/json", close=True, date_line=DATE))
    assert b"connection: close" in lines


def test_render_response_to_head_keeps_the_length_but_sends_no_body() -> None:
    lines, body = _split(render_response(200, b"hello", [], b"text/plain", close=False, date_line=DATE, head_only=True))
    assert b"content-length: 5" in lines
    assert body == b""


def test_render_response_with_empty_body_has_no_content_type_and_zero_length() -> None:
    lines, body = _split(render_response(200, b"", [], b"application/json", close=False, date_line=DATE))
    assert b"content-length: 0" in lines
    assert not any(line.startswith(b"content-type") for line in lines)
    assert body == b""


@pytest.mark.parametrize("status", [204, 304])
def test_render_response_without_content_has_no_body(status: int) -> None:
    lines, body = _split(render_response(status, b"", [], None, close=False, date_line=DATE))
    assert lines[0].startswith(b"HTTP/1.1 %d " % status)
    assert body == b""


def test_render_response_204_has_no_content_length() -> None:
    # RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204 (nor in any 1xx) response.
    lines, _ = _split(render_response(204, b"", [], None, close=False, date_line=DATE))
    assert not any(line.lower().startswith(b"content-length") for line in lines)


def test_date_line_is_an_imf_fixdate_in_gmt() -> None:
    # RFC 9110 §5.6.7: IMF-fixdate, always GMT.
    assert date_line(0) == DATE
    assert date_line(784111777) == b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"


# --- relaying an upstream's response ------------------------------------------------------------------


def test_upstream_response_loses_hop_fields_connection_named_fields_and_content_length() -> None:
    from frontgate.upstream.connection import UpstreamConnection

    class Receiver:
        head: list[tuple[bytes, bytes]] = []

        def response_head(self, status: int, lines: list[bytes], chunked: bool, length: int | None) -> None:
            Receiver.head = [(n, v) for n, v in split_lines(lines) if n not in upstream.named_hop_by_hop]

        def response_body(self, data: bytes) -> None: ...
        def response_complete(self, reusable: bool) -> None: ...
        def upstream_failed(self, error: object, response_started: bool) -> None: ...
        def upstream_write_paused(self, paused: bool) -> None: ...
        def flush(self) -> None: ...

    class Sink:
        def write(self, data: bytes) -> None: ...

    upstream = UpstreamConnection()
    upstream.transport = Sink()  # type: ignore[assignment]
    upstream.start(Receiver(), b"GET / HTTP/1.1\r\n\r\n", head_only=False, chunked_body=False)  # type: ignore[arg-type]
    upstream.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: X-Private, close\r\nx-private: 1\r\n"
        b"keep-alive: timeout=5\r\ntransfer-encoding: chunked\r\nupgrade: h2c\r\ntrailer: x-sum\r\n"
        b"x-public: 2\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\r\n0\r\n\r\n"
    )
    assert Receiver.head == [(b"content-type", b"text/plain"), (b"x-public", b"2"),
                             (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


def _relay(status: int = 200, headers: Headers | None = None, content_length: int | None = None,
           head_only: bool = False, version: str = "1.1", close: bool = False) -> tuple[list[bytes], bool, bool]:
    has_date = any(name == b"date" for name, _ in headers or [])  # the upstream connection tracks this
    lines = [name + b": " + value + b"\r\n" for name, value in headers or []]
    raw, chunked, closing = forwarded_response_head(status, lines, content_length, b"" if has_date else DATE,
                                                    head_only, version, close)
    assert raw.endswith(b"\r\n\r\n")
    return raw[:-4].split(b"\r\n"), chunked, closing


def test_relayed_response_keeps_the_upstream_content_length() -> None:
    lines, chunked, close = _relay(content_length=5)
    assert b"content-length: 5" in lines
    assert not chunked and not close
    assert not any(line.startswith(b"transfer-encoding") for line in lines)


def test_relayed_response_without_length_is_chunked_to_http_1_1_clients() -> None:
    lines, chunked, close = _relay()
    assert chunked and not close
    assert b"transfer-encoding: chunked" in lines


def test_relayed_response_without_length_is_close_delimited_to_http_1_0_clients() -> None:
    # RFC 9112 §6.1: never Transfer-Encoding to an HTTP/1.0 client.
    lines, chunked, close = _relay(version="1.0")
    assert not chunked and close
    assert not any(line.startswith(b"transfer-encoding") for line in lines)
    assert b"connection: close" in lines


def test_relayed_response_to_http_1_0_keep_alive_client_says_keep_alive() -> None:
    lines, _, close = _relay(content_length=0, version="1.0")
    assert not close
    assert b"connection: keep-alive" in lines


@pytest.mark.parametrize(("status", "head_only"), [(204, False), (304, False), (200, True)],
                         ids=["204", "304", "head_request"])
def test_relayed_response_without_body_gets_no_chunked_framing(status: int, head_only: bool) -> None:
    lines, chunked, close = _relay(status=status, head_only=head_only)
    assert not chunked and not close
    assert not any(line.startswith(b"transfer-encoding") for line in lines)


def test_relayed_response_gets_a_date_only_when_it_has_none() -> None:
    lines, _, _ = _relay(content_length=0)
    assert DATE.rstrip() in lines
    upstream_date = (b"date", b"Sun, 06 Nov 1994 08:49:37 GMT")
    lines, _, _ = _relay(headers=[upstream_date], content_length=0)
    assert [line for line in lines if line.lower().startswith(b"date:")] == [b"date: Sun, 06 Nov 1994 08:49:37 GMT"]


def test_relayed_response_announces_the_close() -> None:
    lines, _, close = _relay(content_length=0, close=True)
    assert close
    assert b"connection: close" in lines
