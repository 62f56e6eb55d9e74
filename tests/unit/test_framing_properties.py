"""Framing and header handling as properties (hypothesis), checked through a real gateway and upstream:

- any valid set of end-to-end header fields reaches the upstream unchanged (names compared case-blind,
  order kept), minus hop-by-hop fields, those named in Connection, and the forwarding fields the gateway sets;
- any body, cut into any chunks and sent in any TCP segments, reaches the upstream byte for byte;
- field names that differ only in case are the same field (RFC 9110 §5.1), for framing fields too.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontgate.protocol.http1 import HOP_BY_HOP
from tests.integration.helpers import RecordingUpstream, RunningGateway, free_port, gateway_config, run_gateway
from tests.integration.test_strict_http import Conversation, converse, head_aware_echo, parse_responses

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)

# RFC 9110 §5.6.2 tchar.
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# RFC 9110 §5.5 field-vchar (ASCII part): VCHAR, with SP / HTAB allowed inside a value.
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))

# Fields the gateway owns: framing and routing (re-made), forwarding (set from the real peer), and the ones
# SPEC §3 says are set after auth. Generated end-to-end fields avoid these names.
GATEWAY_SET = {"host", "content-length", "expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
               "forwarded", "via", "x-request-id", "x-request-deadline", "x-consumer", "x-user-id", "x-tenant",
               "traceparent", "tracestate"}
HOP = {name.decode() for name in HOP_BY_HOP} | {"close", "keep-alive", "upgrade"}
NOT_END_TO_END = GATEWAY_SET | HOP


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(head_aware_echo)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, recorder: RecordingUpstream) -> Iterator[RunningGateway]:
    config = gateway_config(free_port(), free_port(), {"app": [recorder.url]},
                            [{"name": "everything", "match": {"paths": ["/"]}, "to": "app"}],
                            observability={"access_log": False})
    with run_gateway(tmp_path_factory.mktemp("framing-properties"), config) as running:
        yield running


# --- strategies ---------------------------------------------------------------------------------------

field_names = st.text(TCHAR, min_size=1, max_size=24).filter(
    lambda name: name.lower() not in NOT_END_TO_END and not name.lower().startswith("proxy-")
)
field_values = st.text(VCHAR + " \t", max_size=40).map(lambda value: value.strip(" \t"))
fields = st.lists(st.tuples(field_names, field_values), max_size=15)


def any_case(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda flips: "".join(c.upper() if flip else c.lower() for c, flip in zip(name, flips, strict=True))
    )


def wire(name: str, value: str) -> bytes:
    return name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"


def ask(gateway: RunningGateway, request: bytes, cuts: list[int] | None = None) -> Conversation:
    """Send `request` (cut at `cuts` into separate writes, a millisecond apart) and read until close."""
    if not cuts:
        return converse(gateway.port, request)
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=3.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    received: list[bytes] = []
    closed = False
    start = time.monotonic()
    with sock:
        bounds = [0, *sorted(set(cuts)), len(request)]
        for begin, end in itertools.pairwise(bounds):
            sock.sendall(request[begin:end])
            time.sleep(0.001)
        while True:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                closed = True
                break
            received.append(data)
    return Conversation(b"".join(received), closed, time.monotonic() - start)


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name not in NOT_END_TO_END]


# --- headers ------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(sent=fields)
def test_end_to_end_fields_reach_the_upstream_unchanged(
    gateway: RunningGateway, recorder: RecordingUpstream, sent: list[tuple[str, str]]
) -> None:
    del recorder.requests[:]
    request = (b"GET /fields HTTP/1.1\r\nHost: props.test\r\n" + b"".join(wire(n, v) for n, v in sent)
               + b"Connection: close\r\n\r\n")
    reply = ask(gateway, request)
    assert [r.status for r in parse_responses(reply.data)] == [200], reply.data[:300]
    assert len(recorder.requests) == 1
    received = recorder.requests[0]
    assert end_to_end(received.headers) == [(name.lower(), value) for name, value in sent]


@PROPERTY_SETTINGS
@given(
    kept=fields,
    named=st.lists(field_names, min_size=1, max_size=5, unique_by=str.lower),
    hop=st.lists(st.sampled_from([("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "X-Sum"),
                                  ("Proxy-Connection", "keep-alive"), ("Proxy-Authorization", "Basic Zm9vOmJhcg==")]),
                 unique=True),
    data=st.data(),
)
def test_hop_by_hop_and_connection_named_fields_never_reach_the_upstream(
    gateway: RunningGateway, recorder: RecordingUpstream, kept: list[tuple[str, str]], named: list[str],
    hop: list[tuple[str, str]], data: st.DataObject,
) -> None:
    named_lower = {n.lower() for n in named}
    kept = [(n, v) for n, v in kept if n.lower() not in named_lower]
    # The Connection field names them in any case; the fields themselves may be spelled in another case.
    options = [data.draw(any_case(n)) for n in named]
    named_fields = [(data.draw(any_case(n)), "hop-value") for n in named]
    del recorder.requests[:]
    request = (b"GET /hops HTTP/1.1\r\nHost: props.test\r\n"
               + wire("Connection", ", ".join([*options, "close"]))
               + b"".join(wire(n, v) for n, v in [*named_fields, *hop, *kept]) + b"\r\n")
    reply = ask(gateway, request)
    assert [r.status for r in parse_responses(reply.data)] == [200], reply.data[:300]
    assert len(recorder.requests) == 1
    received_names = {name for name, _ in recorder.requests[0].headers}
    assert not received_names & named_lower, "a field named in Connection was forwarded"
    assert not received_names & {name.lower() for name, _ in hop}, "a hop-by-hop field was forwarded"
    assert "connection" not in received_names or recorder.requests[0].header("connection") in ("keep-alive", "close")
    assert end_to_end(recorder.requests[0].headers) == [(n.lower(), v) for n, v in kept]


# --- bodies -------------------------------------------------------------------------------------------


@st.composite
def framed_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(body, its framing on the wire): Content-Length, or chunked cut at random points with random
    extensions, uppercase or zero-padded sizes, and an optional trailer."""
    body = draw(st.binary(max_size=6000))
    if draw(st.booleans()):
        return body, b"Content-Length: %d\r\n\r\n" % len(body) + body
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=12))) if len(body) > 1 else []
    bounds = [0, *cuts, len(body)]
    parts = [body[a:b] for a, b in itertools.pairwise(bounds) if body[a:b]]
    out = [b"Transfer-Encoding: chunked\r\n\r\n"]
    for part in parts:
        size = b"%x" % len(part)
        if draw(st.booleans()):
            size = size.upper()
        size = b"0" * draw(st.integers(0, 3)) + size
        extension = draw(st.sampled_from([b"", b";a", b";a=b", b';q="x;y"', b";a=1;b"]))
        out.append(size + extension + b"\r\n" + part + b"\r\n")
    out.append(b"0\r\n")
    if draw(st.booleans()):
        out.append(b"X-Checksum: 42\r\n")
    out.append(b"\r\n")
    return body, b"".join(out)


@PROPERTY_SETTINGS
@given(framed=framed_bodies(), data=st.data())
def test_any_body_in_any_chunks_and_segments_reaches_the_upstream_identical(
    gateway: RunningGateway, recorder: RecordingUpstream, framed: tuple[bytes, bytes], data: st.DataObject
) -> None:
    body, framing = framed
    request = b"POST /body HTTP/1.1\r\nHost: props.test\r\nConnection: close\r\n" + framing
    cuts = data.draw(st.lists(st.integers(1, len(request) - 1), max_size=6), label="tcp cuts")
    del recorder.requests[:]
    reply = ask(gateway, request, cuts)
    responses = parse_responses(reply.data)
    assert [r.status for r in responses] == [200], reply.data[:300]
    assert responses[0].json()["body_length"] == len(body)
    assert [r.body for r in recorder.requests] == [body]
    assert recorder.requests[0].header("x-checksum") is None, "a trailer was forwarded"


# --- names are case-insensitive -----------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(cl=any_case("Content-Length"), te=any_case("Transfer-Encoding"), te_first=st.booleans())
def test_content_length_with_transfer_encoding_is_refused_in_any_case(
    gateway: RunningGateway, recorder: RecordingUpstream, cl: str, te: str, te_first: bool
) -> None:
    lines = [wire(cl, "5"), wire(te, "chunked")]
    if te_first:
        lines.reverse()
    del recorder.requests[:]
    reply = ask(gateway, b"POST / HTTP/1.1\r\nHost: props.test\r\n" + b"".join(lines) + b"\r\n0\r\n\r\n")
    assert [r.status for r in parse_responses(reply.data)] == [400]
    assert reply.closed
    time.sleep(0.02)
    assert recorder.requests == []


@PROPERTY_SETTINGS
@given(first=any_case("Host"), second=any_case("Host"))
def test_two_host_fields_in_any_case_are_refused(
    gateway: RunningGateway, recorder: RecordingUpstream, first: str, second: str
) -> None:
    del recorder.requests[:]
    reply = ask(gateway, b"GET / HTTP/1.1\r\n" + wire(first, "props.test") + wire(second, "props.test") + b"\r\n")
    assert [r.status for r in parse_responses(reply.data)] == [400]
    assert reply.closed
    time.sleep(0.02)
    assert recorder.requests == []


@PROPERTY_SETTINGS
@given(host=any_case("Host"), cl=any_case("Content-Length"), connection=any_case("Connection"),
       close=any_case("close"), body=st.binary(max_size=200))
def test_framing_fields_in_any_case_frame_the_request(
    gateway: RunningGateway, recorder: RecordingUpstream, host: str, cl: str, connection: str, close: str,
    body: bytes,
) -> None:
    follow_up = b"GET /must-not-be-answered HTTP/1.1\r\nHost: props.test\r\n\r\n"
    request = (b"POST /cased HTTP/1.1\r\n" + wire(host, "props.test") + wire(cl, str(len(body)))
               + wire(connection, close) + b"\r\n" + body + follow_up)
    del recorder.requests[:]
    reply = ask(gateway, request)
    assert [r.status for r in parse_responses(reply.data)] == [200], "Connection: close in any case is honoured"
    assert reply.closed
    assert [(r.target, r.body) for r in recorder.requests] == [("/cased", body)]
    assert recorder.requests[0].header("host") == "props.test"


@PROPERTY_SETTINGS
@given(spellings=st.lists(any_case("X-Repeated"), min_size=2, max_size=5), values=st.data())
def test_repeated_field_in_different_cases_is_one_field_with_its_values_in_order(
    gateway: RunningGateway, recorder: RecordingUpstream, spellings: list[str], values: st.DataObject
) -> None:
    sent = [(name, values.draw(field_values.filter(bool))) for name in spellings]
    del recorder.requests[:]
    reply = ask(gateway, b"GET /repeated HTTP/1.1\r\nHost: props.test\r\n" + b"".join(wire(n, v) for n, v in sent)
                + b"Connection: close\r\n\r\n")
    assert [r.status for r in parse_responses(reply.data)] == [200]
    received = recorder.requests[0]
    # RFC 9110 §5.3: a proxy MUST NOT change the order of a repeated field's values; it may combine them.
    combined = ", ".join(received.header_values("x-repeated"))
    assert combined == ", ".join(value for _, value in sent)
