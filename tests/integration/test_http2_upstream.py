"""`protocol: http2` upstreams, and what a server can do to an HTTP/2 stream that a grpcio server cannot be made
to do on cue: RST_STREAM, GOAWAY below a request, a connection dropped mid-response (tests/grpc/h2_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from frontgate.upstream.connection import UpstreamReset
from frontgate.upstream.h2connection import UpstreamStreamRefused
from tests.grpc.driver import WAIT, Received, call, h2_pool, request_head, run, take_stream
from tests.grpc.h2_server import Action, DropMidBody, GoAway, Request, Reset, Respond, ScriptedH2Server
from tests.integration.helpers import free_port, gateway_config, run_gateway
from tests.integration.observability_helpers import wait_until

REFUSED_STREAM = 0x7


@pytest.fixture
def scripted() -> Iterator[list[ScriptedH2Server]]:
    servers: list[ScriptedH2Server] = []
    yield servers
    for server in servers:
        server.close()


def _server(scripted: list[ScriptedH2Server], script: object) -> ScriptedH2Server:
    server = ScriptedH2Server(script)  # type: ignore[arg-type]
    scripted.append(server)
    return server


def _get(server: ScriptedH2Server) -> Received:
    async def main() -> Received:
        return await call(h2_pool(server.port, grpc=False), request_head("GET", "/x", server.port, chunked=False), [],
                          chunked=False)
    return run(main)


def test_a_stream_reset_by_the_upstream_fails_the_request(scripted: list[ScriptedH2Server]) -> None:
    received = _get(_server(scripted, lambda request: Reset()))
    assert isinstance(received.error, UpstreamReset) and received.failed_after_start is False


def test_a_refused_stream_is_a_connect_type_failure(scripted: list[ScriptedH2Server]) -> None:
    received = _get(_server(scripted, lambda request: Reset(REFUSED_STREAM)))
    assert isinstance(received.error, UpstreamStreamRefused)  # nothing was processed: safe to send again


def test_a_stream_above_a_goaway_is_refused(scripted: list[ScriptedH2Server]) -> None:
    received = _get(_server(scripted, lambda request: GoAway()))
    assert isinstance(received.error, UpstreamStreamRefused)


def test_a_connection_dropped_mid_response_fails_the_started_response(scripted: list[ScriptedH2Server]) -> None:
    server = _server(scripted, lambda request: DropMidBody(b"half of it"))

    async def main() -> Received:
        pool = h2_pool(server.port, grpc=False)
        stream = await take_stream(pool)
        received = Received()
        stream.start(received, request_head("GET", "/x", server.port, chunked=False), False, False)
        await asyncio.wait_for(received.done.wait(), WAIT)
        return received

    received = run(main)
    assert received.status == 200 and received.body == b"half of it"
    assert isinstance(received.error, UpstreamReset) and received.failed_after_start is True


def test_an_http1_client_reaches_a_plain_http2_upstream(tmp_path: Path, scripted: list[ScriptedH2Server]) -> None:
    def answer(request: Request) -> Action:
        return Respond(200, [("content-type", "text/plain"), ("x-served-by", "h2")], b"hello " + request.body,
                       trailers=[("x-checksum", "abc")])

    server = _server(scripted, answer)
    config = gateway_config(free_port(), free_port(), {"plain": [server.url]},
                            [{"name": "plain", "match": {"paths": ["/"]}, "to": "plain"}])
    config["upstreams"]["plain"]["protocol"] = "http2"
    with run_gateway(tmp_path, config) as gateway:
        got = httpx.get(gateway.url("/things?page=2"), headers={"x-a": "1", "connection": "keep-alive"}, timeout=10)
        posted = httpx.post(gateway.url("/things"), content=b"body" * 1000, timeout=10)

    assert got.status_code == 200 and got.text == "hello "
    assert got.headers["x-served-by"] == "h2" and "x-checksum" not in got.headers  # trailers: not over HTTP/1.1
    assert posted.status_code == 200 and posted.text == "hello " + "body" * 1000
    first = server.requests[0]
    assert [first.header(name) for name in (":method", ":scheme", ":path")] == ["GET", "http", "/things?page=2"]
    assert first.header(":authority") == f"127.0.0.1:{gateway.port}"  # preserve_host: the client's Host
    assert first.header("x-a") == "1" and first.header("x-request-deadline") is not None
    names = {name for name, _ in first.headers}
    assert not names & {"host", "connection", "keep-alive", "transfer-encoding", "te", "grpc-timeout"}
    assert server.connections == 1  # both requests on one connection


def test_a_request_refused_by_goaway_is_sent_again_on_a_new_connection(
        tmp_path: Path, scripted: list[ScriptedH2Server]) -> None:
    def answer(request: Request) -> Action:
        return GoAway() if request.connection == 1 else Respond(200, [], b"second connection")

    server = _server(scripted, answer)
    config = gateway_config(free_port(), free_port(), {"plain": [server.url]},
                            [{"name": "plain", "match": {"paths": ["/"]}, "to": "plain"}])
    config["upstreams"]["plain"]["protocol"] = "http2"
    with run_gateway(tmp_path, config) as gateway:
        response = httpx.post(gateway.url("/things/7"), timeout=10)  # even a POST: it was never processed

    assert response.status_code == 200 and response.text == "second connection"
    assert server.connections == 2 and [r.connection for r in server.requests] == [1, 2]


def test_http2_targets_are_health_checked_over_http2(tmp_path: Path, scripted: list[ScriptedH2Server]) -> None:
    healthy = [True]

    def answer(request: Request) -> Action:
        if request.header(":path") == "/ready":
            return Respond(200 if healthy[0] else 503)
        return Respond(200, [], b"served")

    server = _server(scripted, answer)
    config = gateway_config(free_port(), free_port(), {"plain": [server.url]},
                            [{"name": "plain", "match": {"paths": ["/"]}, "to": "plain"}])
    config["upstreams"]["plain"].update(protocol="http2", health_check={
        "path": "/ready", "interval": "100ms", "timeout": "1s", "unhealthy_after": 1, "healthy_after": 1})
    with run_gateway(tmp_path, config) as gateway:
        assert httpx.get(gateway.url("/x"), timeout=10).status_code == 200
        healthy[0] = False
        wait_until(lambda: httpx.get(gateway.url("/x"), timeout=10).status_code == 503, timeout=5)
        healthy[0] = True
        wait_until(lambda: httpx.get(gateway.url("/x"), timeout=10).status_code == 200, timeout=5)
    assert any(r.header(":path") == "/ready" and r.header("user-agent") == "frontgate-health-check"
               for r in server.requests)


def test_a_websocket_handshake_to_an_http2_upstream_is_served_as_plain_http(
        tmp_path: Path, scripted: list[ScriptedH2Server]) -> None:
    server = _server(scripted, lambda request: Respond(200, [], b"plain"))
    config = gateway_config(free_port(), free_port(), {"plain": [server.url]},
                            [{"name": "plain", "match": {"paths": ["/"]}, "to": "plain"}])
    config["upstreams"]["plain"]["protocol"] = "http2"
    handshake = {"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
                 "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}
    with run_gateway(tmp_path, config) as gateway:
        response = httpx.get(gateway.url("/socket"), headers=handshake, timeout=10)
    assert response.status_code == 200 and response.text == "plain"
    assert server.requests[0].header("upgrade") is None  # hop-by-hop, and HTTP/2 has no Upgrade
