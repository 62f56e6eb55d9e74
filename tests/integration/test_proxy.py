"""Proxying through the real gateway to real upstreams: what clients and services see."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    json_response,
    raw_exchange,
    run_gateway,
    status_of,
)


def _responder(request: ReceivedRequest, sock: socket.socket) -> bytes | None:
    """Scripted upstream behaviours, chosen by path."""
    path = request.target
    if path.startswith("/redirect"):
        return b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"
    if path.startswith("/nocontent"):
        return b"HTTP/1.1 204 No Content\r\nx-kind: empty\r\n\r\n"
    if path.startswith("/notmodified"):
        return b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"
    if path.startswith("/chunked"):
        return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive, x-secret\r\n"
                b"x-secret: hop\r\nkeep-alive: timeout=5\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    if path.startswith("/broken-framing"):
        return b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"
    if path.startswith("/garbage"):
        return b"NOT HTTP AT ALL\r\n\r\n"
    if path.startswith("/die-mid-body"):
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
        return None
    if path.startswith("/die-mid-chunked"):
        sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n" + b"y" * 1000 + b"\r\n")
        return None
    if path.startswith("/close-before-answer"):
        return None
    if path.startswith("/slow"):
        time.sleep(2)
        return json_response(200, {"slow": True})
    if path.startswith("/until-close"):
        sock.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody until close")
        return None
    if path.startswith("/big"):
        body = b"z" * (4 * 1024 * 1024)
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    return json_response(200, {
        "method": request.method, "target": request.target, "headers": request.headers,
        "body_sha256": hashlib.sha256(request.body).hexdigest(), "body_length": len(request.body),
    })


SCRIPTED_PATHS = ["/redirect", "/nocontent", "/notmodified", "/chunked", "/broken-framing", "/garbage",
                  "/die-mid-body", "/die-mid-chunked", "/close-before-answer", "/until-close", "/big"]


@pytest.fixture(scope="module")
def scripted() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(_responder)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, scripted: RecordingUpstream) -> Iterator[RunningGateway]:
    dead_port = free_port()  # nothing listens there
    config = gateway_config(
        free_port(), free_port(),
        upstreams={"origin": [scripted.url], "dead": [f"http://127.0.0.1:{dead_port}"]},
        routes=[
            {"name": "api", "match": {"paths": ["/api"]}, "to": "origin",
             "plugins": {"rewrite": {"strip_prefix": True, "prefix": "/v1"}}},
            {"name": "orders", "match": {"paths": ["/orders"], "methods": ["GET", "POST"]}, "to": "origin"},
            {"name": "home", "match": {"exact": ["/home"]}, "to": "origin"},
            {"name": "dead", "match": {"paths": ["/dead"]}, "to": "dead"},
            {"name": "slow", "match": {"paths": ["/slow"]}, "to": "origin", "timeout": "500ms"},
            {"name": "scripted", "match": {"paths": SCRIPTED_PATHS, "methods": ["GET"]}, "to": "origin",
             "plugins": {"response_headers": {"remove": ["x-kind"], "set": {"x-gateway": "frontgate"}}}},
        ],
        plugins={"request_id": {}},
        observability={"access_log": {"to": "stdout"}},
    )
    with run_gateway(tmp_path_factory.mktemp("proxy"), config) as running:
        yield running


def _get(gateway: RunningGateway, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(gateway.url(path), timeout=10, **kwargs)  # type: ignore[arg-type]


def test_get_is_proxied_with_query_and_request_id(gateway: RunningGateway) -> None:
    response = _get(gateway, "/orders/7?expand=items&x=%20")
    assert response.status_code == 200
    seen = response.json()
    assert seen["target"] == "/orders/7?expand=items&x=%20"
    assert response.headers["x-request-id"]
    assert dict(seen["headers"])["x-request-id"] == response.headers["x-request-id"]


def test_forwarding_headers_come_from_the_real_peer_not_the_client(gateway: RunningGateway) -> None:
    response = _get(gateway, "/orders", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6",
        "X-Forwarded-Host": "evil.example",
    })
    headers = response.json()["headers"]
    values = {k: v for k, v in headers}
    assert values["x-forwarded-for"] == "127.0.0.1"
    assert values["x-forwarded-proto"] == "http"
    assert values["x-forwarded-host"] == f"127.0.0.1:{gateway.port}"
    assert values["forwarded"].startswith("for=127.0.0.1;proto=http")
    assert "6.6.6.6" not in json.dumps(headers)
    assert "evil.example" not in json.dumps(headers)


def test_hop_by_hop_and_connection_named_headers_are_not_forwarded(gateway: RunningGateway) -> None:
    response = raw_exchange(gateway.port, (
        b"GET /orders HTTP/1.1\r\nHost: a\r\nConnection: close, X-Private\r\nX-Private: secret\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n"
    ))
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    names = {k for k, _ in body["headers"]}
    assert "x-kept" in names
    assert not names & {"connection", "x-private", "keep-alive", "te", "proxy-connection"}


def test_response_hop_by_hop_headers_are_dropped_and_chunked_relayed(gateway: RunningGateway) -> None:
    response = _get(gateway, "/chunked")
    assert response.status_code == 200
    assert response.text == "hello world"
    assert "x-secret" not in response.headers
    assert "keep-alive" not in response.headers


def test_no_route_gets_json_404_with_request_id(gateway: RunningGateway) -> None:
    response = _get(gateway, "/nowhere")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found"
    assert body["request_id"] == response.headers["x-request-id"]


def test_wrong_method_gets_405_with_allow(gateway: RunningGateway) -> None:
    response = httpx.request("DELETE", gateway.url("/orders/1"), timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
    body = response.json()
    assert body["error"] == "method_not_allowed"
    assert body["request_id"] == response.headers["x-request-id"]


def test_repeated_targets_keep_their_own_route_and_method_answer(gateway: RunningGateway) -> None:
    # Routing decisions are cached per (method, host, raw path): a repeat must give the same answer as the first
    # time, and a cached GET must not answer a DELETE of the same path (405), nor a cached 405 a later GET.
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.get(gateway.url("/orders/7")).status_code == 200
            assert client.request("DELETE", gateway.url("/orders/7")).status_code == 405
            assert client.get(gateway.url("/orders/%37")).status_code == 200  # the same path, spelled apart
            assert client.get(gateway.url("/ordersx")).status_code == 404


def test_prefix_matches_on_segment_boundaries(gateway: RunningGateway) -> None:
    assert _get(gateway, "/ordersx").status_code == 404
    assert _get(gateway, "/orders/").status_code == 200
    assert _get(gateway, "/orders/x").status_code == 200


def test_dot_segments_are_normalised_before_routing_and_forwarding(gateway: RunningGateway) -> None:
    request = b"GET /api/%2e%2e/orders/./7 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    response = raw_exchange(gateway.port, request)
    assert status_of(response) == 200
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["target"] == "/orders/7"  # routed as /orders/7, not through /api's rewrite


def test_rewrite_strips_the_route_prefix_and_adds_one(gateway: RunningGateway) -> None:
    assert _get(gateway, "/api/items?x=1").json()["target"] == "/v1/items?x=1"
    assert _get(gateway, "/api").json()["target"] == "/v1/"


def test_exact_route(gateway: RunningGateway) -> None:
    assert _get(gateway, "/home").json()["target"] == "/home"


def test_post_body_streams_through_unchanged(gateway: RunningGateway) -> None:
    body = bytes(range(256)) * 4000
    response = httpx.post(gateway.url("/orders"), content=body, timeout=10)
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_upload_is_relayed(gateway: RunningGateway) -> None:
    def parts() -> Iterator[bytes]:
        for i in range(50):
            yield bytes([i]) * 1000

    response = httpx.post(gateway.url("/orders"), content=parts(), timeout=10)
    expected = b"".join(bytes([i]) * 1000 for i in range(50))
    assert response.json()["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_redirects_are_relayed_not_followed(gateway: RunningGateway) -> None:
    response = _get(gateway, "/redirect")
    assert response.status_code == 302
    assert response.headers["location"] == "/elsewhere"


def test_head_204_and_304_have_no_body_and_keep_the_connection(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        head = client.head("/orders")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        empty = client.get("/nocontent")
        assert empty.status_code == 204 and empty.content == b""
        assert "x-kind" not in empty.headers  # response_headers plugin removed it
        assert empty.headers["x-gateway"] == "frontgate"
        assert client.get("/notmodified").status_code == 304
        assert client.get("/orders").status_code == 200  # same keep-alive connection still healthy


def test_large_response_streams(gateway: RunningGateway) -> None:
    response = _get(gateway, "/big")
    assert len(response.content) == 4 * 1024 * 1024


def test_upstream_broken_framing_gives_502_not_the_bytes(gateway: RunningGateway) -> None:
    for path in ("/broken-framing", "/garbage", "/close-before-answer"):
        response = _get(gateway, path)
        assert response.status_code == 502, path
        body = response.json()
        assert body["error"] == "bad_gateway"
        assert str(gateway.port) not in response.text and "127.0.0.1" not in response.text


def test_upstream_dying_mid_body_leaves_a_truncated_response(gateway: RunningGateway) -> None:
    for path in ("/die-mid-body", "/die-mid-chunked"):
        with pytest.raises(httpx.RemoteProtocolError):
            _get(gateway, path)


def test_response_framed_by_close_is_rechunked(gateway: RunningGateway) -> None:
    response = _get(gateway, "/until-close")
    assert response.text == "body until close"


def test_refused_upstream_is_a_fast_502(gateway: RunningGateway) -> None:
    started = time.monotonic()
    response = _get(gateway, "/dead")
    assert response.status_code == 502
    assert time.monotonic() - started < 2
    assert response.json()["error"] == "bad_gateway"


def test_route_timeout_gives_504(gateway: RunningGateway) -> None:
    started = time.monotonic()
    response = _get(gateway, "/slow")
    assert response.status_code == 504
    assert 0.4 < time.monotonic() - started < 1.8
    assert response.json()["error"] == "gateway_timeout"


def test_keep_alive_reuses_upstream_connections(gateway: RunningGateway, scripted: RecordingUpstream) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        client.get("/orders")
        before = scripted.connections
        for _ in range(20):
            assert client.get("/orders").status_code == 200
    assert scripted.connections == before


def test_http10_client_gets_a_body_it_can_read(gateway: RunningGateway) -> None:
    response = raw_exchange(gateway.port, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"hello world"


def test_access_log_has_one_line_per_request(gateway: RunningGateway) -> None:
    marker = "/orders/access-log-check"
    _get(gateway, marker)
    time.sleep(0.3)  # flushed at most every 100 ms
    lines = [r for r in gateway.access_log() if r["path"] == marker]
    assert len(lines) == 1
    assert lines[0]["route"] == "orders" and lines[0]["status"] == 200


def test_upload_memory_stays_flat(tmp_path: Path) -> None:
    """200 MiB streamed through must not grow the gateway's memory by anything like its size."""
    sink_body_free = RecordingUpstream(_count_and_drop)
    try:
        config = gateway_config(free_port(), free_port(), upstreams={"sink": [sink_body_free.url]},
                                routes=[{"name": "up", "match": {"paths": ["/"]}, "to": "sink"}],
                                server={"limits": {"max_body_bytes": "1GiB"}},
                                observability={"access_log": False})
        with run_gateway(tmp_path, config) as gw:
            size = 200 * 1024 * 1024
            chunk = b"a" * (1024 * 1024)

            def body() -> Iterator[bytes]:
                for _ in range(size // len(chunk)):
                    yield chunk

            response = httpx.post(gw.url("/upload"), content=body(), timeout=60,
                                  headers={"content-length": str(size)})
            assert response.status_code == 200
            assert response.json()["n"] == size
            rss_kib = _rss_kib(gw.process.pid)
            assert rss_kib < 150 * 1024, f"gateway RSS {rss_kib} KiB after a 200 MiB upload"
    finally:
        sink_body_free.close()


def _count_and_drop(request: ReceivedRequest, sock: socket.socket) -> bytes:
    return json_response(200, {"n": len(request.body)})


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set: catches a buffer that came and went
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_stalled_request_body_gets_408_and_never_completes_upstream(tmp_path: Path) -> None:
    sink = RecordingUpstream(_count_and_drop)
    try:
        config = gateway_config(free_port(), free_port(), upstreams={"sink": [sink.url]},
                                routes=[{"name": "up", "match": {"paths": ["/"]}, "to": "sink"}],
                                server={"timeouts": {"read_body": "1s", "drain": "1s"}},
                                observability={"access_log": False})
        with run_gateway(tmp_path, config) as gw:
            started = time.monotonic()
            response = raw_exchange(gw.port, b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
                                    timeout=5)
            assert status_of(response) == 408
            assert 0.9 < time.monotonic() - started < 3
            assert sink.requests == []
    finally:
        sink.close()


def test_responses_carry_a_date_even_when_the_upstream_sent_none(gateway: RunningGateway) -> None:
    from email.utils import parsedate_to_datetime

    for response in (_get(gateway, "/orders"), _get(gateway, "/nowhere")):
        sent = parsedate_to_datetime(response.headers["date"])
        assert abs(sent.timestamp() - time.time()) < 5
