"""WebSocket through the gateway, as users run it: a real `websockets` server as the upstream and a real
`websockets` client (raw sockets only for bytes a library would never send)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.http11 import Request, Response
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection

from frontgate.auth.consumers import hash_key
from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    echo,
    free_port,
    gateway_config,
    json_response,
    raw_exchange,
    run_gateway,
    status_of,
)
from tests.integration.websocket_helpers import (
    GUID,
    WebSocketUpstream,
    client_frame,
    handshake_request,
    read_head,
    read_server_frame,
    read_until_closed,
    self_signed_certificate,
    ws_connect,
)

API_KEY = "ws-test-key-0123456789"


@pytest.fixture
def ws_upstream() -> Iterator[WebSocketUpstream]:
    server = WebSocketUpstream()
    yield server
    server.close()


def _config(upstream_url: str, websocket: dict[str, Any] | None = None, plugins: dict[str, Any] | None = None,
            **sections: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "chat", "match": {"paths": ["/chat"]}, "to": "ws"}
    if websocket is not None:
        route["websocket"] = websocket
    if plugins is not None:
        route["plugins"] = plugins
    return gateway_config(free_port(), free_port(), {"ws": [upstream_url]}, [route], **sections)


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _closed_with(ws: Any, timeout: float = 5.0) -> ConnectionClosed:
    """Read until the connection closes; return how it closed."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    return closed.value


# --- the handshake --------------------------------------------------------------------------------------


def test_messages_flow_both_ways_and_the_upstream_gets_the_whole_handshake(
    tmp_path: Path, ws_upstream: WebSocketUpstream
) -> None:
    upstream = WebSocketUpstream(subprotocols=["chat.v2"])
    try:
        with run_gateway(tmp_path, _config(upstream.url)) as gw, ws_connect(
            gw.port, "/chat/room?x=1", subprotocols=["chat.v1", "chat.v2"], additional_headers={"X-Trace": "t1"}
        ) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"
            big = os.urandom(300_000)
            ws.send(big)
            assert ws.recv(timeout=5) == big
            assert ws.subprotocol == "chat.v2"
            assert ws.response is not None
            # Extensions are negotiated end to end (the gateway passes Sec-WebSocket-Extensions both ways).
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        request = upstream.requests[0]
        assert request.path == "/chat/room?x=1"
        assert request.headers["Upgrade"].lower() == "websocket"
        assert "upgrade" in request.headers["Connection"].lower()
        assert request.headers["Sec-WebSocket-Version"] == "13"
        assert request.headers["Sec-WebSocket-Protocol"] == "chat.v1, chat.v2"
        assert request.headers["X-Trace"] == "t1"
        assert request.headers["X-Forwarded-For"] == "127.0.0.1"
    finally:
        upstream.close()


def test_wss_through_a_tls_listener_to_a_tls_upstream(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    upstream_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_tls.load_cert_chain(cert, key)
    upstream = WebSocketUpstream(ssl=upstream_tls)
    port = free_port()
    config = _config(f"https://127.0.0.1:{upstream.port}")
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}",
                                   "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}]
    config["upstreams"]["ws"]["tls"] = {"ca": str(cert)}
    client_tls = ssl.create_default_context(cafile=str(cert))
    try:
        with run_gateway(tmp_path, config) as gw, connect(
                f"wss://127.0.0.1:{gw.port}/chat", ssl=client_tls, proxy=None, ping_interval=None,
                open_timeout=5, close_timeout=2) as ws:
            for size in (5, 200_000):  # the larger one fills TLS records and socket buffers on the way
                message = os.urandom(size)
                ws.send(message)
                assert ws.recv(timeout=5) == message
            ws.close()
            upstream.wait_ended(1)
            assert upstream.close_codes == [1000]
    finally:
        upstream.close()


def test_plugins_run_first_and_refuse_a_handshake_with_their_usual_status(
    tmp_path: Path, ws_upstream: WebSocketUpstream
) -> None:
    config = _config(ws_upstream.url, plugins={"api_key": {"header": "X-Api-Key"},
                                               "request_id": {"header": "X-Request-Id"}},
                     consumers=[{"name": "chat-app", "api_keys": [hash_key(API_KEY)]}])
    with run_gateway(tmp_path, config) as gw:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(gw.port)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body or b"{}")["error"] == "unauthorized"
        assert ws_upstream.requests == []  # never reached the upstream

        with ws_connect(gw.port, additional_headers={"X-Api-Key": API_KEY}) as ws:
            ws.send("in")
            assert ws.recv(timeout=5) == "in"
            assert ws.response is not None
            request_id = ws.response.headers["X-Request-Id"]  # response hooks ran on the 101
        assert ws_upstream.requests[0].headers["X-Request-Id"] == request_id
        assert ws_upstream.requests[0].headers["X-Consumer"] == "chat-app"


def test_an_upstream_that_refuses_the_upgrade_is_relayed_as_a_plain_response_then_the_connection_closes(
    tmp_path: Path
) -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus.FORBIDDEN, "not in this room\n")

    upstream = WebSocketUpstream(process_request=refuse)
    try:
        with run_gateway(tmp_path, _config(upstream.url)) as gw:
            with pytest.raises(InvalidStatus) as refused:
                ws_connect(gw.port)
            assert refused.value.response.status_code == 403
            assert refused.value.response.body == b"not in this room\n"

            handshake, _ = handshake_request()
            answer = raw_exchange(gw.port, handshake + b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(answer) == 403
            assert b"connection: close" in answer.lower()
            assert answer.count(b"HTTP/1.1 ") == 1  # the bytes after the handshake were not served as HTTP
    finally:
        upstream.close()


def test_the_handshake_goes_on_a_fresh_upstream_connection_and_bytes_sent_early_follow_the_101(
    tmp_path: Path
) -> None:
    def answer(request: ReceivedRequest, sock: socket.socket) -> bytes | None:
        key = request.header("sec-websocket-key")
        if key is None:
            return echo(request, sock)
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        early = sock.recv(65536)  # the client's frame, sent before it saw the 101
        sock.sendall(b"\x81" + bytes([len(early)]) + early)  # returned inside a text frame
        return None

    upstream = RecordingUpstream(answer)
    try:
        with run_gateway(tmp_path, _config(upstream.url)) as gw:
            assert httpx.get(gw.url("/chat/plain"), timeout=5).status_code == 200  # leaves a pooled connection
            handshake, accept = handshake_request()
            frame = client_frame(0x1, b"early")
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
                sock.sendall(handshake + frame)  # one packet: handshake and first frame
                head, rest = read_head(sock)
                assert head.startswith(b"HTTP/1.1 101 ")
                assert b"\r\nsec-websocket-accept: " + accept + b"\r\n" in head + b"\r\n"
                opcode, payload, _ = read_server_frame(sock, rest)
            assert (opcode, payload) == (0x1, frame)
            assert upstream.connections == 2
    finally:
        upstream.close()


def test_a_handshake_is_not_retried_once_sent(tmp_path: Path) -> None:
    def answer(request: ReceivedRequest, sock: socket.socket) -> bytes | None:
        if request.target.endswith("/reset"):
            return None  # close without answering
        return json_response(503, {"busy": True})

    upstream = RecordingUpstream(answer)
    config = _config(upstream.url)
    config["routes"][0]["retry"] = {"attempts": 3, "retry_on": ["reset", "5xx"]}
    try:
        with run_gateway(tmp_path, config) as gw:
            assert httpx.get(gw.url("/chat/reset"), timeout=5).status_code == 502
            assert len(upstream.requests) == 3  # a plain GET is retried by this policy

            for path, status in (("/chat/reset", 502), ("/chat/busy", 503)):
                before = len(upstream.requests)
                with pytest.raises(InvalidStatus) as refused:
                    ws_connect(gw.port, path)
                assert refused.value.response.status_code == status
                time.sleep(0.3)  # room for a retry that must not come
                assert len(upstream.requests) == before + 1
    finally:
        upstream.close()


def test_other_upgrades_and_handshakes_the_route_does_not_relay_are_served_as_plain_http(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    config = gateway_config(
        free_port(), free_port(), {"app": [upstream.url]},
        [{"name": "chat", "match": {"paths": ["/chat"]}, "to": "app"},
         {"name": "no-ws", "match": {"paths": ["/plain"]}, "to": "app", "websocket": {"enabled": False}}],
    )
    try:
        with run_gateway(tmp_path, config) as gw:
            h2c = (b"GET /chat/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                   b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
            post = b"POST /chat/b HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            handshake, _ = handshake_request("/plain/c")
            last = b"GET /chat/d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            answers = raw_exchange(gw.port, h2c + post + handshake + last)
            assert answers.count(b"HTTP/1.1 200 ") == 4  # one connection, each served as HTTP/1.1 in turn
            assert [(r.method, r.target) for r in upstream.requests] == [
                ("GET", "/chat/a"), ("POST", "/chat/b"), ("GET", "/plain/c"), ("GET", "/chat/d")]
            for request in upstream.requests:
                assert request.header("upgrade") is None
                assert request.header("http2-settings") is None
                assert "upgrade" not in (request.header("connection") or "")
            # The handshake's own fields are end-to-end and still forwarded.
            assert upstream.requests[2].header("sec-websocket-key") is not None

            smuggled = b"GET /chat/hidden HTTP/1.1\r\nHost: x\r\n\r\n"
            with_body = (b"POST /chat/e HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(smuggled)) + smuggled
            answer = raw_exchange(gw.port, with_body)
            assert status_of(answer) == 400
            assert answer.count(b"HTTP/1.1 ") == 1
            assert len(upstream.requests) == 4  # neither the request nor its "body" went anywhere
    finally:
        upstream.close()


# --- the tunnel -----------------------------------------------------------------------------------------


def test_a_close_on_either_side_closes_the_other(tmp_path: Path) -> None:
    def hang_up_on_bye(ws: ServerConnection) -> None:
        for message in ws:
            if message == "bye":
                ws.close(4001, "see you")
                return
            ws.send(message)

    upstream = WebSocketUpstream(hang_up_on_bye)
    try:
        with run_gateway(tmp_path, _config(upstream.url)) as gw:
            with ws_connect(gw.port) as ws:
                ws.send("bye")
                closed = _closed_with(ws)
                assert closed.rcvd is not None and closed.rcvd.code == 4001
                assert closed.rcvd.reason == "see you"
            upstream.wait_ended(1)

            ws = ws_connect(gw.port)
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
            ws.close(1000)
            upstream.wait_ended(2)
            assert upstream.close_codes == [4001, 1000]
    finally:
        upstream.close()


def test_messages_over_max_message_bytes_close_the_tunnel_with_1009(tmp_path: Path) -> None:
    def echo_or_shout(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(b"x" * 2000 if message == "shout" else message)

    upstream = WebSocketUpstream(echo_or_shout)
    config = _config(upstream.url, websocket={"max_message_bytes": "1KiB"})
    try:
        with run_gateway(tmp_path, config) as gw:
            # One frame, a fragmented message, and a message from the upstream.
            for ends, oversized in enumerate((b"a" * 1025, [b"a" * 600, b"b" * 600], "shout"), start=1):
                with ws_connect(gw.port, compression=None) as ws:
                    ws.send(b"k" * 1024)  # at the limit: fine
                    assert ws.recv(timeout=5) == b"k" * 1024
                    # The gateway may close while the client is still sending the fragments of a message it
                    # already refused; how it closed is read back either way.
                    with contextlib.suppress(ConnectionClosed):
                        ws.send(oversized)
                    closed = _closed_with(ws)
                    assert closed.rcvd is not None and closed.rcvd.code == 1009
                upstream.wait_ended(ends)
                assert upstream.close_codes[-1] == 1009  # told too, its stream was at a frame boundary
    finally:
        upstream.close()


def test_a_frame_that_cannot_be_followed_closes_the_tunnel_with_1002(
    tmp_path: Path, ws_upstream: WebSocketUpstream
) -> None:
    config = _config(ws_upstream.url, websocket={"max_message_bytes": "64KiB"})
    with run_gateway(tmp_path, config) as gw:
        handshake, _ = handshake_request()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(handshake)
            head, rest = read_head(sock)
            assert head.startswith(b"HTTP/1.1 101 ")
            sock.sendall(client_frame(0x1, b"ok"))
            opcode, payload, rest = read_server_frame(sock, rest)
            assert (opcode, payload) == (0x1, b"ok")
            sock.sendall(client_frame(0x3, b"reserved opcode"))
            opcode, payload, rest = read_server_frame(sock, rest)
            assert opcode == 0x8 and payload[:2] == (1002).to_bytes(2, "big")
            assert read_until_closed(sock) == b""
        ws_upstream.wait_ended(1)
        assert ws_upstream.close_codes == [1002]  # it never saw the reserved frame, only the gateway's Close


def test_idle_tunnels_are_closed_and_busy_ones_are_not(tmp_path: Path, ws_upstream: WebSocketUpstream) -> None:
    config = _config(ws_upstream.url, websocket={"idle_timeout": "1s"})
    with run_gateway(tmp_path, config) as gw:
        silent = ws_connect(gw.port)
        busy = ws_connect(gw.port)
        started = time.monotonic()
        while time.monotonic() - started < 2.6:  # the sweep runs once a second: closed by ~2.1 s
            busy.send("ping")
            assert busy.recv(timeout=5) == "ping"
            time.sleep(0.3)
        closed = _closed_with(silent, timeout=0.5)
        assert closed.rcvd is None  # the gateway closed the socket without a Close frame
        busy.send("still here")
        assert busy.recv(timeout=5) == "still here"
        busy.close()
        ws_upstream.wait_ended(2)


def test_a_reload_does_not_cut_open_websockets(tmp_path: Path, ws_upstream: WebSocketUpstream) -> None:
    second = WebSocketUpstream()
    try:
        config = _config(ws_upstream.url)
        with run_gateway(tmp_path, config) as gw, ws_connect(gw.port) as ws:
            ws.send("before")
            assert ws.recv(timeout=5) == "before"
            config["upstreams"]["ws"] = {"targets": [second.url]}
            config["routes"][0]["websocket"] = {"idle_timeout": "2m"}
            gw.config_path.write_text(json.dumps(config))
            gw.process.send_signal(signal.SIGHUP)
            admin = f"http://127.0.0.1:{gw.admin_port}/status"
            _wait_until(lambda: httpx.get(admin, timeout=5).json()["generation"] == 2)
            with ws_connect(gw.port) as new:  # new handshakes follow the new config
                new.send("new")
                assert new.recv(timeout=5) == "new"
            ws.send("after")  # the open one still talks to the upstream it started with
            assert ws.recv(timeout=5) == "after"
            assert len(ws_upstream.requests) == 1 and len(second.requests) == 1
            assert ws_upstream.close_codes == []
    finally:
        second.close()


def test_sigterm_gives_open_websockets_the_drain_time_then_closes_them(
    tmp_path: Path, ws_upstream: WebSocketUpstream
) -> None:
    config = _config(ws_upstream.url, server={"timeouts": {"drain": "1500ms"}})
    with run_gateway(tmp_path, config) as gw:
        ws = ws_connect(gw.port)
        gw.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        time.sleep(0.5)
        ws.send("during drain")
        assert ws.recv(timeout=5) == "during drain"
        _closed_with(ws)
        assert time.monotonic() - stopped >= 1.3
        assert gw.process.wait(10) == 0
        ws_upstream.wait_ended(1)


def test_open_tunnels_are_counted_and_each_is_one_access_log_line(
    tmp_path: Path, ws_upstream: WebSocketUpstream
) -> None:
    with run_gateway(tmp_path, _config(ws_upstream.url)) as gw:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        ws = ws_connect(gw.port, compression=None)
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        assert httpx.get(admin + "/status", timeout=5).json()["websockets"] == 1
        assert "frontgate_websocket_tunnels 1.0" in httpx.get(admin + "/metrics", timeout=5).text
        ws.close(1000)

        _wait_until(lambda: httpx.get(admin + "/status", timeout=5).json()["websockets"] == 0)
        _wait_until(lambda: any(line["status"] == 101 for line in gw.access_log()))
        [line] = [line for line in gw.access_log() if line["status"] == 101]
        assert line["route"] == "chat" and line["path"] == "/chat" and line["method"] == "GET"
        assert line["upstream"] == "ws" and line["target"] == ws_upstream.url
        # Client to upstream: "hello" (2 + 4 mask + 5) and Close 1000 (2 + 4 + 2); back: "hello" and Close.
        assert (line["bytes_in"], line["bytes_out"]) == (19, 11)
        assert line["duration_us"] >= line["upstream_us"] > 0
        assert "frontgate_websocket_tunnels 0.0" in httpx.get(admin + "/metrics", timeout=5).text


def test_tunnels_count_toward_max_connections(tmp_path: Path, ws_upstream: WebSocketUpstream) -> None:
    config = _config(ws_upstream.url, server={"limits": {"max_connections": 2}})
    with run_gateway(tmp_path, config) as gw:
        first, second = ws_connect(gw.port), ws_connect(gw.port)
        # The third is closed at once, without an answer (seen while sending the handshake or reading for 101).
        with pytest.raises((InvalidMessage, ConnectionClosed)):
            ws_connect(gw.port)
        first.close()
        _wait_until(lambda: len(ws_upstream.close_codes) == 1)
        time.sleep(0.2)
        with ws_connect(gw.port) as third:
            third.send("room again")
            assert third.recv(timeout=5) == "room again"
        second.close()


# --- back-pressure --------------------------------------------------------------------------------------

FLOOD = 64 * 1024 * 1024
CHUNK = 64 * 1024
# What the sockets on the way may hold (loopback buffers grow to a few MiB each); without back-pressure
# the gateway would take the whole flood at once.
IN_FLIGHT_BOUND = 40 * 1024 * 1024


def test_a_client_that_stops_reading_stops_the_upstream_sending(tmp_path: Path) -> None:
    sent = [0]

    def flood(ws: ServerConnection) -> None:
        ws.recv()
        while sent[0] < FLOOD:
            ws.send(b"\x00" * CHUNK)
            sent[0] += CHUNK
        ws.recv()

    upstream = WebSocketUpstream(flood, compression=None)
    try:
        with run_gateway(tmp_path, _config(upstream.url)) as gw, ws_connect(
                gw.port, compression=None, max_queue=4) as ws:
            ws.send("go")
            time.sleep(1.5)  # not reading
            assert sent[0] < IN_FLIGHT_BOUND
            received = 0
            while received < FLOOD:
                received += len(ws.recv(timeout=10))
            assert received == FLOOD  # everything arrives once the client reads again
            ws.send("done")
    finally:
        upstream.close()


def test_an_upstream_that_stops_reading_stops_the_client_sending(tmp_path: Path) -> None:
    reading = threading.Event()
    received = [0]

    def slow_reader(ws: ServerConnection) -> None:
        reading.wait(10)
        while received[0] < FLOOD:
            received[0] += len(ws.recv(timeout=10))
        ws.send("all")

    upstream = WebSocketUpstream(slow_reader, compression=None, max_queue=4)
    try:
        with run_gateway(tmp_path, _config(upstream.url)) as gw, ws_connect(gw.port, compression=None) as ws:
            sent = [0]

            def flood() -> None:
                while sent[0] < FLOOD:
                    ws.send(b"\x00" * CHUNK)
                    sent[0] += CHUNK

            sender = threading.Thread(target=flood, daemon=True)
            sender.start()
            time.sleep(1.5)
            assert sent[0] < IN_FLIGHT_BOUND
            reading.set()
            sender.join(20)
            assert ws.recv(timeout=20) == "all"
            assert received[0] == FLOOD
    finally:
        upstream.close()
