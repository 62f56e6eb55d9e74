"""HTTP/2 downstream through the real gateway: h2c prior knowledge and ALPN h2 over TLS, with real clients
(httpx with h2) and raw frames for the negative cases (h2spec style), against real HTTP/1.1 upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import hyperframe.frame
import pytest
import trustme

from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    echo,
    free_port,
    gateway_config,
    json_response,
    run_gateway,
)

BIG = 3 * 1024 * 1024
SECOND_EVENT_SENT: list[float] = []  # when the upstream sent the second server-sent event


def _responder(request: ReceivedRequest, sock: socket.socket) -> bytes | None:
    if request.target.startswith("/big"):
        return b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % BIG \
            + b"x" * BIG
    if request.target.startswith("/stream"):
        return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    if request.target.startswith("/events"):
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"d\r\ndata: first\n\n\r\n")
        time.sleep(0.6)
        SECOND_EVENT_SENT.append(time.monotonic())
        return b"e\r\ndata: second\n\n\r\n0\r\n\r\n"
    if request.target.startswith("/slow"):
        time.sleep(0.5)
        return json_response(200, {"slow": True})
    return echo(request, sock)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(_responder)
    yield server
    server.close()


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _routes(silent_port: int = 9) -> list[dict[str, Any]]:
    return [
        # Its auth check waits on an introspection endpoint that never answers: the request body piles up.
        {"name": "held", "match": {"paths": ["/held"]}, "to": "app", "plugins": {"oauth2_introspection": {
            "url": f"http://127.0.0.1:{silent_port}/introspect", "client_id": "gw", "client_secret": "s",
            "timeout": "20s"}}},
        {"name": "small", "match": {"paths": ["/small"]}, "to": "app", "plugins": {"body_limit": {"value": "1KiB"}}},
        {"name": "keyed", "match": {"paths": ["/keyed"]}, "to": "app",
         "plugins": {"api_key": {"header": "x-api-key"}}},
        {"name": "all", "match": {"paths": ["/"]}, "to": "app"},
    ]


@pytest.fixture(scope="module")
def h2c_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream,
                silent_port: int) -> Iterator[RunningGateway]:
    port = free_port()
    config = gateway_config(port, free_port(), {"app": [upstream.url]}, _routes(silent_port),
                            plugins={"request_id": {"header": "X-Request-Id"}},
                            consumers=[{"name": "acme", "api_keys": [_key_hash("s3cret")]}])
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}", "h2c": True}]
    with run_gateway(tmp_path_factory.mktemp("h2c"), config) as gateway:
        yield gateway


def _key_hash(key: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def h2_client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(http1=False, http2=True, timeout=10, **kwargs)


# --- h2c: what a client sees ----------------------------------------------------------------------------


def test_h2c_prior_knowledge_is_proxied_to_an_http1_upstream(h2c_gateway: RunningGateway) -> None:
    with h2_client() as client:
        response = client.get(h2c_gateway.url("/hello?x=1"), headers={"x-custom": "yes"})
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "GET" and seen["target"] == "/hello?x=1"
    headers = dict(seen["headers"])
    assert headers["host"] == f"127.0.0.1:{h2c_gateway.port}"  # :authority becomes Host
    assert headers["x-custom"] == "yes"
    assert headers["x-forwarded-proto"] == "http"
    assert "date" in response.headers and response.headers["x-request-id"]


def test_the_same_h2c_listener_still_serves_http1(h2c_gateway: RunningGateway) -> None:
    response = httpx.get(h2c_gateway.url("/hello"), timeout=10)
    assert response.http_version == "HTTP/1.1" and response.status_code == 200


def test_split_cookie_fields_reach_the_upstream_as_one(h2c_gateway: RunningGateway) -> None:
    conn, sock = _raw_h2(h2c_gateway.port)
    conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/c"), (b":scheme", b"http"),
                          (b":authority", b"localhost"), (b"cookie", b"a=1"), (b"cookie", b"b=2")], end_stream=True)
    sock.sendall(conn.data_to_send())
    status, _, body = _read_response(conn, sock, 1)
    assert status == 200
    assert ["cookie", "a=1; b=2"] in json.loads(body)["headers"]


def test_large_bodies_stream_both_ways_under_flow_control(h2c_gateway: RunningGateway) -> None:
    with h2_client() as client:
        big = client.get(h2c_gateway.url("/big"))
        assert big.status_code == 200 and len(big.content) == BIG  # far beyond the 64 KiB initial window
        upload = client.post(h2c_gateway.url("/upload"), content=b"y" * (2 * 1024 * 1024))
        assert upload.json()["body_length"] == 2 * 1024 * 1024
        # No content-length: the body goes upstream chunked.
        streamed = client.post(h2c_gateway.url("/upload"), content=iter([b"z" * 100_000] * 5))
        assert streamed.status_code == 200, streamed.text
        assert streamed.json()["body_length"] == 500_000
        assert dict(streamed.json()["headers"]).get("transfer-encoding") == "chunked"


def test_an_unframed_upstream_body_arrives_whole(h2c_gateway: RunningGateway) -> None:
    with h2_client() as client:
        response = client.get(h2c_gateway.url("/stream"))
    assert response.text == "hello world"


def test_server_sent_events_are_relayed_unbuffered(h2c_gateway: RunningGateway) -> None:
    SECOND_EVENT_SENT.clear()
    with h2_client() as client, client.stream("GET", h2c_gateway.url("/events")) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        first_arrived = time.monotonic()
        rest = b"".join(chunks)
    assert response.headers["content-type"] == "text/event-stream"
    assert first == b"data: first\n\n" and rest == b"data: second\n\n"
    assert first_arrived < SECOND_EVENT_SENT[0]  # the first event did not wait for the rest


def test_many_concurrent_streams_on_one_connection(h2c_gateway: RunningGateway) -> None:
    # One event loop drives all streams: httpx's HTTP/2 connection is not safe to share between threads
    # (its HPACK encoder state races, which a server rightly reads as garbled header blocks).
    async def fetch_all() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=30,
                                     limits=httpx.Limits(max_connections=1)) as client:
            async def fetch(i: int) -> tuple[int, str]:
                response = await client.get(h2c_gateway.url(f"/n/{i}"))
                return response.status_code, response.json()["target"]

            return list(await asyncio.gather(*(fetch(i) for i in range(120))))

    assert asyncio.run(fetch_all()) == [(200, f"/n/{i}") for i in range(120)]

def test_the_gateway_announces_its_stream_and_header_limits(h2c_gateway: RunningGateway) -> None:
    conn, sock = _raw_h2(h2c_gateway.port)
    events = _events_until(conn, sock, h2.events.RemoteSettingsChanged)
    settings = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)).changed_settings
    assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 100
    assert settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE].new_value == 16 * 1024


def test_streams_beyond_the_limit_are_refused_one_by_one_and_the_rest_served(h2c_gateway: RunningGateway) -> None:
    # Sent at once, before the client could know the limit (RFC 9113 §5.1.2: REFUSED_STREAM, safe to retry).
    conn, sock = _raw_h2(h2c_gateway.port)
    stream_ids = list(range(1, 2 * 105, 2))
    for stream_id in stream_ids:
        conn.send_headers(stream_id, [*_BASE_HEAD[:1], (b":path", b"/n/%d" % stream_id), *_BASE_HEAD[2:]],
                          end_stream=True)
    sock.sendall(conn.data_to_send())
    ended: set[int] = set()
    refused: set[int] = set()
    deadline = time.monotonic() + 30
    while len(ended) + len(refused) < len(stream_ids) and time.monotonic() < deadline:
        for event in conn.receive_data(sock.recv(65536)):
            if isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                assert event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                refused.add(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            assert not isinstance(event, h2.events.ConnectionTerminated)
        sock.sendall(conn.data_to_send())
    assert ended == set(stream_ids[:100])
    assert refused == set(stream_ids[100:])


def test_routing_errors_and_plugins_work_as_over_http1(h2c_gateway: RunningGateway) -> None:
    with h2_client() as client:
        refused = client.get(h2c_gateway.url("/keyed"))
        allowed = client.get(h2c_gateway.url("/keyed"), headers={"x-api-key": "s3cret"})
        too_big = client.post(h2c_gateway.url("/small"), content=b"a" * 5000)
    assert refused.status_code == 401 and refused.json()["error"]
    assert allowed.status_code == 200 and dict(allowed.json()["headers"])["x-consumer"] == "acme"
    assert too_big.status_code == 413


def test_headers_beyond_the_limit_get_431_on_their_stream_only(h2c_gateway: RunningGateway) -> None:
    with h2_client() as client:
        huge = client.get(h2c_gateway.url("/h"), headers={f"x-h{i}": "v" * 100 for i in range(200)})
        after = client.get(h2c_gateway.url("/h"))
    assert huge.status_code == 431
    assert after.status_code == 200  # the connection lives on


def test_gateway_errors_reach_grpc_clients_as_grpc_statuses(h2c_gateway: RunningGateway) -> None:
    with h2_client() as client:
        response = client.post(h2c_gateway.url("/keyed"), content=b"\0\0\0\0\0",
                               headers={"content-type": "application/grpc", "te": "trailers"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc"
    assert response.headers["grpc-status"] == "16"  # UNAUTHENTICATED
    assert "unauthorized" in response.headers["grpc-message"] or response.headers["grpc-message"]


def test_access_log_records_http2_requests(h2c_gateway: RunningGateway) -> None:
    with h2_client() as client:
        client.get(h2c_gateway.url("/logged-h2"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [e for e in h2c_gateway.access_log() if e["path"] == "/logged-h2"]
        if lines:
            break
        time.sleep(0.05)
    assert lines and lines[0]["status"] == 200 and lines[0]["route"] == "all"


# --- h2spec-style negative cases on raw frames ------------------------------------------------------------


def _raw_h2(port: int, validate: bool = True) -> tuple[h2.connection.H2Connection, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=validate,
        normalize_outbound_headers=validate))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return conn, sock


def _events_until(conn: h2.connection.H2Connection, sock: socket.socket,
                  done: type[h2.events.Event] | tuple[type[h2.events.Event], ...],
                  timeout: float = 5) -> list[h2.events.Event]:
    seen: list[h2.events.Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        events = conn.receive_data(data)
        seen += events
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)
        if any(isinstance(e, done) for e in events):
            break
    return seen


def _read_response(conn: h2.connection.H2Connection, sock: socket.socket,
                   stream_id: int) -> tuple[int, dict[bytes, bytes], bytes]:
    status, headers, body = 0, {}, b""
    for event in _events_until(conn, sock, h2.events.StreamEnded):
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
            headers = dict(event.headers)
            status = int(headers[b":status"])
        elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
            body += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
    return status, headers, body


def _goaway(events: list[h2.events.Event]) -> h2.events.ConnectionTerminated | None:
    return next((e for e in events if isinstance(e, h2.events.ConnectionTerminated)), None)


def test_a_bad_preface_closes_the_connection(h2c_gateway: RunningGateway) -> None:
    with socket.create_connection(("127.0.0.1", h2c_gateway.port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        received = b""
        with contextlib.suppress(ConnectionResetError):  # a close with our bytes unread is a reset
            while chunk := sock.recv(65536):
                received += chunk
    assert b" 200 " not in received  # never served: at most a 400 for HTTP/1.1 garbage, then closed


_BASE_HEAD = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"localhost")]


@pytest.mark.parametrize("fields", [
    pytest.param([*_BASE_HEAD, (b"X-Upper", b"1")], id="uppercase-name"),
    pytest.param([*_BASE_HEAD, (b"connection", b"keep-alive")], id="connection-specific-field"),
    pytest.param(_BASE_HEAD[:3], id="no-authority"),
])
def test_malformed_header_blocks_are_a_protocol_error_and_never_served(
        h2c_gateway: RunningGateway, fields: list[tuple[bytes, bytes]]) -> None:
    conn, sock = _raw_h2(h2c_gateway.port, validate=False)
    conn.send_headers(1, fields, end_stream=True)
    sock.sendall(conn.data_to_send())
    events = _events_until(conn, sock, h2.events.ConnectionTerminated)
    assert not any(isinstance(e, h2.events.ResponseReceived) for e in events)
    goaway = _goaway(events)
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


def test_a_protocol_error_gets_exactly_one_goaway_then_the_close(h2c_gateway: RunningGateway) -> None:
    conn, sock = _raw_h2(h2c_gateway.port, validate=False)
    conn.send_headers(1, [*_BASE_HEAD, (b"X-Upper", b"1")], end_stream=True)
    sock.sendall(conn.data_to_send())
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    goaways = [f for f in _raw_frames(received) if isinstance(f, hyperframe.frame.GoAwayFrame)]
    assert [g.error_code for g in goaways] == [h2.errors.ErrorCodes.PROTOCOL_ERROR]


def test_a_connection_error_drops_its_streams_in_flight_cleanly(h2c_gateway: RunningGateway) -> None:
    conn, sock = _raw_h2(h2c_gateway.port, validate=False)
    conn.send_headers(1, [*_BASE_HEAD[:1], (b":path", b"/slow"), *_BASE_HEAD[2:]], end_stream=True)
    sock.sendall(conn.data_to_send())
    time.sleep(0.1)  # the first stream is waiting on its upstream
    conn.send_headers(3, [*_BASE_HEAD, (b"X-Upper", b"1")], end_stream=True)
    sock.sendall(conn.data_to_send())
    goaway = _goaway(_events_until(conn, sock, h2.events.ConnectionTerminated))
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    time.sleep(0.8)  # the upstream answers the abandoned stream meanwhile
    with h2_client() as client:
        assert client.get(h2c_gateway.url("/after-error")).status_code == 200
    assert "Traceback" not in h2c_gateway.logs()


def test_sending_beyond_the_flow_control_window_is_a_flow_control_error(h2c_gateway: RunningGateway) -> None:
    conn, sock = _raw_h2(h2c_gateway.port)
    _events_until(conn, sock, h2.events.RemoteSettingsChanged)
    # The request waits on its auth check, so its body is not taken and not acknowledged past 64 KiB.
    conn.send_headers(1, [(b":method", b"POST"), (b":path", b"/held"), (b":scheme", b"http"),
                          (b":authority", b"localhost"), (b"authorization", b"Bearer t")])
    # Frames made by hand: the client library would refuse to overrun the window it was given.
    window = conn.remote_settings.initial_window_size
    payload = b"a" * 16384
    frame = len(payload).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + payload
    sock.sendall(conn.data_to_send() + frame * ((window + 128 * 1024) // 16384))
    goaway = _goaway(_events_until(conn, sock, h2.events.ConnectionTerminated))
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR


def test_a_client_reset_cancels_the_stream_and_the_connection_lives_on(h2c_gateway: RunningGateway) -> None:
    conn, sock = _raw_h2(h2c_gateway.port)
    conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/slow"), (b":scheme", b"http"),
                          (b":authority", b"localhost")], end_stream=True)
    conn.reset_stream(1)
    conn.send_headers(3, [(b":method", b"GET"), (b":path", b"/after"), (b":scheme", b"http"),
                          (b":authority", b"localhost")], end_stream=True)
    sock.sendall(conn.data_to_send())
    status, _, body = _read_response(conn, sock, 3)
    assert status == 200 and json.loads(body)["target"] == "/after"


# --- TLS with ALPN --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_setup(tmp_path_factory: pytest.TempPathFactory,
              upstream: RecordingUpstream) -> Iterator[tuple[RunningGateway, trustme.CA]]:
    tmp = tmp_path_factory.mktemp("h2tls")
    ca = trustme.CA()
    cert = ca.issue_cert("api.example.test", "localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "api.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "api-key.pem"))
    port = free_port()
    config = gateway_config(port, free_port(), {"app": [upstream.url]}, _routes())
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}", "tls": {
        "certificates": [{"cert": str(tmp / "api.pem"), "key": str(tmp / "api-key.pem")}], "http2": True}}]
    with run_gateway(tmp, config) as gateway:
        yield gateway, ca


def _tls_context(ca: trustme.CA, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(alpn)
    return context


def test_alpn_h2_over_tls(tls_setup: tuple[RunningGateway, trustme.CA]) -> None:
    gateway, ca = tls_setup
    with httpx.Client(http2=True, verify=_tls_context(ca, ["h2", "http/1.1"]), timeout=10) as client:
        response = client.get(f"https://localhost:{gateway.port}/tls?y=2")
        big = client.get(f"https://localhost:{gateway.port}/big")
    assert response.http_version == "HTTP/2" and response.status_code == 200
    assert dict(response.json()["headers"])["x-forwarded-proto"] == "https"
    assert len(big.content) == BIG


def test_clients_without_h2_get_http1_on_the_same_tls_listener(tls_setup: tuple[RunningGateway, trustme.CA]) -> None:
    gateway, ca = tls_setup
    with httpx.Client(verify=_tls_context(ca, ["http/1.1"]), timeout=10) as client:
        response = client.get(f"https://localhost:{gateway.port}/tls")
    assert response.http_version == "HTTP/1.1" and response.status_code == 200


def test_h2c_and_tls_together_is_a_config_error(tmp_path: Path) -> None:
    from frontgate.config.loader import load_config
    from frontgate.errors import ConfigError

    path = tmp_path / "f.yaml"
    path.write_text("version: 1\nserver:\n  listen:\n    - address: 127.0.0.1:8443\n      h2c: true\n"
                    "      tls: {certificates: [{cert: a.pem, key: b.pem}]}\n"
                    "upstreams: {a: {targets: ['http://127.0.0.1:1']}}\n"
                    "routes: [{name: r, match: {paths: [/]}, to: a}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config([str(path)])
    assert "h2c" in str(caught.value) and "f.yaml:4" in str(caught.value)


# --- shutdown ----------------------------------------------------------------------------------------------


def _raw_frames(data: bytes) -> list[hyperframe.frame.Frame]:
    """Parse a server's whole output by hand: the h2 client library stops reading after a GOAWAY."""
    frames = []
    while len(data) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def test_sigterm_sends_goaway_and_lets_the_open_stream_finish(tmp_path: Path, upstream: RecordingUpstream) -> None:
    port = free_port()
    config = gateway_config(port, free_port(), {"app": [upstream.url]}, _routes())
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}", "h2c": True}]
    with run_gateway(tmp_path, config) as gateway:
        conn, sock = _raw_h2(port)
        conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/slow"), (b":scheme", b"http"),
                              (b":authority", b"localhost")], end_stream=True)
        sock.sendall(conn.data_to_send())
        time.sleep(0.2)
        gateway.process.send_signal(15)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert gateway.process.wait(10) == 0
    frames = _raw_frames(received)
    kinds = [type(f).__name__ for f in frames]
    goaway_at = kinds.index("GoAwayFrame")
    first_goaway = frames[goaway_at]
    assert isinstance(first_goaway, hyperframe.frame.GoAwayFrame)
    assert first_goaway.last_stream_id == 1 and first_goaway.error_code == 0
    # After the GOAWAY, the open stream's response still arrives whole.
    body = b"".join(f.data for f in frames[goaway_at:] if isinstance(f, hyperframe.frame.DataFrame))
    assert json.loads(body) == {"slow": True}
    assert "HeadersFrame" in kinds[goaway_at:]
