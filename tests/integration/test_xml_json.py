"""The xml_json plugin in the real gateway, against a real XML service: JSON requests arrive as XML with their
own length, XML answers leave as JSON, whatever the upstream's framing; what is not JSON or XML passes
untouched; broken or oversized XML gives a clean 502, never half a response."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    run_gateway,
)

ORDER_XML = b'<?xml version="1.0"?><order id="7"><item>tea</item><item>milk</item><total>4.5</total></order>'


def _chunked(body: bytes, content_type: bytes) -> bytes:
    half = len(body) // 2
    parts = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]))
    return b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ntransfer-encoding: chunked\r\n\r\n" + \
        parts + b"0\r\n\r\n"


def _legacy(request: ReceivedRequest, _sock: object) -> bytes:
    if request.target.startswith("/legacy/echo"):  # answers with what it got, as XML
        sent = request.body.split(b"?>", 1)[-1] if request.body.startswith(b"<?xml") else request.body
        return _chunked(b"<got>" + sent + b"</got>", b"application/xml")
    if request.target.startswith("/legacy/broken"):
        return _chunked(b"<order><item>tea</order>", b"application/xml")
    if request.target.startswith("/legacy/big"):
        return _chunked(b"<a>" + b"x" * 5000 + b"</a>", b"text/xml")
    if request.target.startswith("/legacy/text"):
        return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: %d\r\n\r\n%s" % (
        len(ORDER_XML), ORDER_XML)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(_legacy)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    routes = [{"name": "legacy", "match": {"paths": ["/legacy"]}, "to": "legacy",
               "plugins": {"xml_json": {"request": "json_to_xml", "response": "xml_to_json", "root": "request",
                                        "body_limit": "4KiB"}}}]
    port = free_port()
    config = gateway_config(port, free_port(), {"legacy": [upstream.url]}, routes)
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}", "h2c": True}]  # HTTP/1.1 and h2c
    with run_gateway(tmp_path_factory.mktemp("xml"), config) as running:
        yield running


def test_an_xml_answer_reaches_the_client_as_json(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    response = httpx.get(gateway.url("/legacy/orders/7"), headers={"accept-encoding": "gzip"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.json() == {"order": {"@id": "7", "item": ["tea", "milk"], "total": "4.5"}}
    assert upstream.requests[-1].header("accept-encoding") is None  # asked for an answer it can rewrite


def test_a_json_request_arrives_as_xml_and_the_answer_comes_back_as_json(
        gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    response = httpx.post(gateway.url("/legacy/echo"), json={"order": {"@id": "8", "item": ["tea", "jam"]}},
                          timeout=10)
    assert response.status_code == 200
    sent = upstream.requests[-1]
    assert sent.header("content-type") == "application/xml; charset=utf-8"
    assert sent.header("content-length") == str(len(sent.body))
    assert b'<order id="8"><item>tea</item><item>jam</item></order>' in sent.body
    assert response.json() == {"got": {"order": {"@id": "8", "item": ["tea", "jam"]}}}
    wrapped = httpx.post(gateway.url("/legacy/echo"), json=[1, 2], timeout=10)
    assert b"<request><item>1</item><item>2</item></request>" in upstream.requests[-1].body
    assert wrapped.json() == {"got": {"request": {"item": ["1", "2"]}}}


def test_what_is_neither_passes_untouched(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    text = httpx.get(gateway.url("/legacy/text"), timeout=10)
    assert text.status_code == 200 and text.text == "hello" and text.headers["content-type"] == "text/plain"
    form = httpx.post(gateway.url("/legacy/echo"), content=b"a=1", headers={"content-type": "text/plain"},
                      timeout=10)
    assert upstream.requests[-1].body == b"a=1" and form.json() == {"got": "a=1"}


def test_bad_bodies_get_clean_errors(gateway: RunningGateway) -> None:
    bad_json = httpx.post(gateway.url("/legacy/echo"), content=b"{nope", headers={"content-type": "application/json"},
                          timeout=10)
    assert bad_json.status_code == 400 and bad_json.json()["error"] == "invalid_body"
    deep = httpx.post(gateway.url("/legacy/echo"), content=b"[" * 2000 + b"]" * 2000,  # within body_limit
                      headers={"content-type": "application/json"}, timeout=10)
    assert deep.status_code == 400
    broken = httpx.get(gateway.url("/legacy/broken"), timeout=10)
    assert broken.status_code == 502 and broken.json()["error"] == "bad_gateway"
    big = httpx.get(gateway.url("/legacy/big"), timeout=10)
    assert big.status_code == 502 and big.json()["error"] == "upstream_response_too_large"
    assert httpx.get(gateway.url("/legacy/orders/1"), timeout=10).status_code == 200  # still serving


def test_over_http2_the_same(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        response = client.get(gateway.url("/legacy/orders/7"))
        assert response.http_version == "HTTP/2" and response.status_code == 200
        assert response.json()["order"]["@id"] == "7"
        assert int(response.headers["content-length"]) == len(response.content)
        echoed = client.post(gateway.url("/legacy/echo"), json={"note": "hi"})
        assert echoed.json() == {"got": {"note": "hi"}}
        assert client.get(gateway.url("/legacy/broken")).status_code == 502
