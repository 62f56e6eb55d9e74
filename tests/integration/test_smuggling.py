"""Request smuggling end to end: CL.TE, TE.CL, TE.TE and CL.CL payloads (PortSwigger's catalogue and HTTP
Garden-style parser discrepancies), each trying to hide a second request for `/admin` inside the first.

Whatever the gateway does with a payload, the upstream must never receive a request for `/admin`, and every
body it receives must be exactly the bytes the client framed. Ambiguous payloads are refused (400, or 501
for an unknown coding) and the connection is closed; payloads that are valid HTTP are forwarded with their
body intact. After each payload a victim request on a fresh connection must get its own, correct answer:
nothing was left behind on a pooled upstream connection.

Every payload is sent twice: in one write, and trickled in small segments so that parser state crossing
read boundaries is exercised too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.helpers import RecordingUpstream, RunningGateway, run_gateway
from tests.integration.test_strict_http import (
    assert_gateway_error,
    converse,
    head_aware_echo,
    parse_responses,
    strict_gateway_config,
)

ADMIN = b"GET /admin HTTP/1.1\r\nHost: gw.test\r\n\r\n"
HEAD = b"POST / HTTP/1.1\r\nHost: gw.test\r\n"


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(head_aware_echo)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, recorder: RecordingUpstream) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("smuggling"), strict_gateway_config(recorder.url)) as running:
        yield running


@pytest.fixture
def upstream(recorder: RecordingUpstream) -> RecordingUpstream:
    del recorder.requests[:]
    return recorder


@pytest.fixture(params=["one_write", "trickled"])
def send_mode(request: pytest.FixtureRequest) -> dict[str, float]:
    return {"segment": 0, "pause": 0.0} if request.param == "one_write" else {"segment": 5, "pause": 0.002}


# --- payloads -----------------------------------------------------------------------------------------


def cl_te(te_lines: bytes) -> bytes:
    """The front end believes Content-Length (the whole thing is one body); a back end believing the
    chunked coding sees the body end at `0` and `/admin` as the next request."""
    body = b"0\r\n\r\n" + ADMIN
    return HEAD + b"Content-Length: %d\r\n" % len(body) + te_lines + b"\r\n\r\n" + body


def te_cl(te_lines: bytes) -> bytes:
    """The front end believes the chunked coding; a back end believing Content-Length (4) stops inside the
    first chunk and reads `/admin` as the next request."""
    body = b"%x\r\n" % len(ADMIN) + ADMIN + b"\r\n0\r\n\r\n"
    return HEAD + b"Content-Length: 4\r\n" + te_lines + b"\r\n\r\n" + body


# Transfer-Encoding spellings that one parser honours and another ignores (PortSwigger's TE.TE list, plus
# HTTP Garden finds). With a Content-Length beside them, every one must be refused.
TE_OBFUSCATIONS = {
    "plain": b"Transfer-Encoding: chunked",
    "xchunked": b"Transfer-Encoding: xchunked",
    "space_before_colon": b"Transfer-Encoding : chunked",
    "chunked_then_junk_field": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
    "junk_then_chunked_field": b"Transfer-Encoding: x\r\nTransfer-Encoding: chunked",
    "tab_before_value": b"Transfer-Encoding:\tchunked",
    "leading_space_name": b" Transfer-Encoding: chunked",
    "after_bare_lf": b"X: X\nTransfer-Encoding: chunked",
    "after_bare_cr": b"X: X\rTransfer-Encoding: chunked",
    "name_folded": b"Transfer-Encoding\r\n : chunked",
    "value_folded": b"Transfer-Encoding:\r\n chunked",
    "vertical_tab": b"Transfer-Encoding:\x0bchunked",
    "form_feed": b"Transfer-Encoding:\x0cchunked",
    "nul_after_value": b"Transfer-Encoding: chunked\x00",
    "uppercase_value": b"Transfer-Encoding: CHUNKED",
    "empty_list_element": b"Transfer-Encoding: ,chunked",
    "chunked_then_identity": b"Transfer-Encoding: chunked, identity",
    "identity_then_chunked": b"Transfer-Encoding: identity, chunked",
    "quoted": b'Transfer-Encoding: "chunked"',
    "truncated": b"Transfer-Encoding: chunk",
    "non_breaking_space": b"Transfer-Encoding: \xa0chunked",
    "uppercase_name": b"TRANSFER-ENCODING: chunked",
}

REFUSED_PAYLOADS = [
    *(pytest.param(cl_te(te), id=f"cl_te_{name}") for name, te in TE_OBFUSCATIONS.items()),
    *(pytest.param(te_cl(te), id=f"te_cl_{name}") for name, te in TE_OBFUSCATIONS.items()),
    # CL.CL: two lengths, one of them 0 (or hidden), the other covering `/admin`.
    pytest.param(HEAD + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(ADMIN) + ADMIN,
                 id="cl_cl_zero_first"),
    pytest.param(HEAD + b"Content-Length: %d\r\nContent-Length: 0\r\n\r\n" % len(ADMIN) + ADMIN,
                 id="cl_cl_zero_last"),
    pytest.param(HEAD + b"Content-Length: %d, 0\r\n\r\n" % len(ADMIN) + ADMIN, id="cl_list_with_zero"),
    pytest.param(HEAD + b"Content-Length : 0\r\nContent-Length: %d\r\n\r\n" % len(ADMIN) + ADMIN,
                 id="cl_space_before_colon"),
    pytest.param(HEAD + b"X: y\r\n Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(ADMIN) + ADMIN,
                 id="cl_in_obs_fold"),
    pytest.param(HEAD + b"Content-Length: %d\r\n\t0\r\n\r\n" % len(ADMIN) + ADMIN, id="cl_value_folded"),
    pytest.param(HEAD + b"Content-Length: +%d\r\n\r\n" % len(ADMIN) + ADMIN, id="cl_plus_sign"),
    pytest.param(HEAD + b"Content-Length: 0\x00%d\r\n\r\n" % len(ADMIN) + ADMIN, id="cl_with_nul"),
    pytest.param(HEAD + b"X: y\nContent-Length: %d\r\n\r\n" % len(ADMIN) + ADMIN, id="cl_after_bare_lf"),
    # Chunk-level discrepancies: a lenient parser ends the body early and reads `/admin` next.
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n\r\n" + ADMIN,
                 id="chunk_size_wrapping_to_zero"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n" + ADMIN, id="chunk_size_0x0"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\n\r\n" + ADMIN, id="last_chunk_bare_lf"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n0;ext\n\r\n" + ADMIN, id="chunk_ext_bare_lf"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc0\r\n\r\n" + ADMIN,
                 id="chunk_data_without_crlf"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n" + ADMIN,
                 id="chunk_data_longer_than_size"),
    # TE on HTTP/1.0 (RFC 9112 §6.1: the framing is faulty).
    pytest.param(b"POST / HTTP/1.0\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
                 % (len(ADMIN) + 5) + b"0\r\n\r\n" + ADMIN, id="http_1_0_te_and_cl"),
    pytest.param(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + ADMIN, id="http_1_0_te_only"),
]


# Valid HTTP whose body merely looks like a request: forwarded whole, as one request.
FORWARDED_PAYLOADS = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % len(ADMIN) + ADMIN, ADMIN,
                 id="get_with_body_cl_0_desync"),
    pytest.param(HEAD + b"Content-Length: %d\r\n\r\n" % len(ADMIN) + ADMIN, ADMIN, id="post_content_length"),
    pytest.param(HEAD + b"Content-Length: 00%d\r\n\r\n" % len(ADMIN) + ADMIN, ADMIN,
                 id="content_length_leading_zeros"),
    pytest.param(b"OPTIONS / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % len(ADMIN) + ADMIN, ADMIN,
                 id="options_with_body"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(ADMIN) + ADMIN + b"\r\n0\r\n\r\n", ADMIN,
                 id="chunked"),
    pytest.param(HEAD + b"Transfer-Encoding: CHUNKED\r\n\r\n%x\r\n" % len(ADMIN) + ADMIN + b"\r\n0\r\n\r\n",
                 ADMIN, id="chunked_uppercase_coding"),
    pytest.param(HEAD + b"Transfer-Encoding:\tchunked\r\n\r\n%x\r\n" % len(ADMIN) + ADMIN + b"\r\n0\r\n\r\n",
                 ADMIN, id="chunked_after_tab"),
    pytest.param(HEAD + b"Transfer-Encoding: ,chunked\r\n\r\n%x\r\n" % len(ADMIN) + ADMIN + b"\r\n0\r\n\r\n",
                 ADMIN, id="chunked_with_empty_list_element"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n%X;a=1\r\n" % len(ADMIN) + ADMIN + b"\r\n0\r\n\r\n",
                 ADMIN, id="chunked_uppercase_hex_and_extension"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n%x\r\n" % (len(ADMIN) - 4) + ADMIN[4:]
                 + b"\r\n0\r\nX-Trailer: GET /admin\r\n\r\n", ADMIN, id="chunked_split_request_and_trailer"),
]


def assert_victim_served_correctly(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    """A later, innocent client on a fresh connection gets its own answer, and the upstream gets exactly its
    request: nothing of the attack was left on a pooled upstream connection."""
    before = len(upstream.requests)
    reply = converse(gateway.port, b"POST /victim HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n"
                                   b"Connection: close\r\n\r\nv=1")
    responses = parse_responses(reply.data)
    assert [r.status for r in responses] == [200], reply.data[:400]
    assert responses[0].json()["target"] == "/victim", "the victim got someone else's response"
    time.sleep(0.05)
    assert [(r.target, r.body) for r in upstream.requests[before:]] == [("/victim", b"v=1")]


def assert_no_admin(upstream: RecordingUpstream) -> None:
    targets = [r.target for r in upstream.requests]
    assert not any("/admin" in t for t in targets), f"a smuggled request reached the upstream: {targets}"


@pytest.mark.parametrize("payload", REFUSED_PAYLOADS)
def test_ambiguous_payload_is_refused_and_smuggles_nothing(
    gateway: RunningGateway, upstream: RecordingUpstream, payload: bytes, send_mode: dict[str, float]
) -> None:
    reply = converse(gateway.port, payload, timeout=2.5, segment=int(send_mode["segment"]), pause=send_mode["pause"])
    time.sleep(0.1)
    assert_no_admin(upstream)
    assert [(r.target, r.body) for r in upstream.requests] == [], "part of a refused payload was forwarded"
    responses = parse_responses(reply.data)
    assert len(responses) == 1, f"expected exactly one refusal, got {reply.data[:600]!r} (closed={reply.closed})"
    assert_gateway_error(responses[0], (400, 501), upstream)
    assert reply.closed, "the connection stayed open after a refusal"
    assert_victim_served_correctly(gateway, upstream)
    assert_no_admin(upstream)


@pytest.mark.parametrize(("payload", "body"), FORWARDED_PAYLOADS)
def test_valid_payload_is_forwarded_as_one_request_with_the_framed_body(
    gateway: RunningGateway, upstream: RecordingUpstream, payload: bytes, body: bytes, send_mode: dict[str, float]
) -> None:
    request = payload.replace(b"Host: gw.test\r\n", b"Host: gw.test\r\nConnection: close\r\n", 1)
    reply = converse(gateway.port, request, segment=int(send_mode["segment"]), pause=send_mode["pause"])
    responses = parse_responses(reply.data)
    assert [r.status for r in responses] == [200], reply.data[:400]
    assert responses[0].json()["target"] == "/"
    time.sleep(0.05)
    assert [(r.target, r.body) for r in upstream.requests] == [("/", body)]
    assert_victim_served_correctly(gateway, upstream)
    assert_no_admin(upstream)


def test_request_pipelined_after_a_refused_one_is_never_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    # The refused request's body would end early for a lenient parser; the real pipelined /admin after it
    # must not be answered either: a refusal ends the connection.
    payload = HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + ADMIN + ADMIN
    reply = converse(gateway.port, payload)
    responses = parse_responses(reply.data)
    assert len(responses) == 1
    assert_gateway_error(responses[0], 400, upstream)
    assert reply.closed
    time.sleep(0.1)
    assert upstream.requests == []


def test_pipelined_admin_behind_a_slow_valid_request_is_routed_as_its_own_request(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    # The honest counterpart: a real second request is a request, with its own route decision, never glued
    # to the first one's body.
    body = b"x" * 300
    payload = (HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
               + b"GET /admin HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    reply = converse(gateway.port, payload, segment=64, pause=0.002)
    responses = parse_responses(reply.data)
    assert [r.status for r in responses] == [200, 200]
    assert [r.json()["target"] for r in responses] == ["/", "/admin"]
    assert [(r.target, r.body) for r in upstream.requests] == [("/", body), ("/admin", b"")]
