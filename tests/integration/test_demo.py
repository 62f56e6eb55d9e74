"""`frontgate demo` as a user runs it: start it, paste the printed commands, press Ctrl-C (SIGTERM)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from frontgate.demo.run import ServiceThread
from tests.integration.demo_helpers import (
    CurlCommand,
    GatewayProcess,
    printed_curl_commands,
    run_cli,
    running,
)
from tests.integration.helpers import free_port

TIMEOUT = httpx.Timeout(5.0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    port, admin_port = free_port(), free_port()
    output = tmp_path_factory.mktemp("demo") / "demo.out"
    with running(["demo", "--port", str(port), "--admin-port", str(admin_port)], port, admin_port,
                 output) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def commands(demo: GatewayProcess) -> list[CurlCommand]:
    return printed_curl_commands(demo.output())


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


def replay(client: httpx.Client, command: CurlCommand) -> httpx.Response:
    return client.request(command.method, command.url, headers=command.headers, content=command.data)


def find(commands: list[CurlCommand], path: str, **has: str) -> CurlCommand:
    for command in commands:
        headers = {k.lower(): v for k, v in command.headers}
        if command.path == path and all(headers.get(k.replace("_", "-")) == v for k, v in has.items()):
            return command
    raise AssertionError(f"the banner prints no curl command for {path} {has}: {[c.line for c in commands]}")


def test_banner_names_gateway_and_admin_urls(demo: GatewayProcess) -> None:
    output = demo.output()
    assert f"http://localhost:{demo.port}" in output
    assert f"http://localhost:{demo.admin_port}" in output
    assert "Ctrl-C" in output


def test_every_printed_curl_command_works(demo: GatewayProcess, commands: list[CurlCommand],
                                         client: httpx.Client) -> None:
    assert len(commands) >= 8
    for command in commands:
        assert f":{demo.port}/" in command.url or f":{demo.admin_port}/" in command.url, command.line
        response = replay(client, command)
        expected = 404 if command.path == "/nope" else (201 if command.method == "POST" else 200)
        assert response.status_code == expected, f"{command.line}\n{response.status_code} {response.text}"


def test_orders_list_is_json_with_a_request_id_and_no_server_header(commands: list[CurlCommand],
                                                                   client: httpx.Client) -> None:
    response = replay(client, find(commands, "/orders"))
    assert response.headers["content-type"] == "application/json"
    assert [order["id"] for order in response.json()["orders"]] == ["1001", "1002", "1003"]
    assert response.headers["x-request-id"]
    assert "server" not in response.headers  # removed by the response_headers plugin
    assert response.headers["x-gateway"] == "frontgate-demo"


def test_creating_an_order_answers_201_with_a_location(commands: list[CurlCommand], client: httpx.Client) -> None:
    command = next(c for c in commands if c.path == "/orders" and c.method == "POST")
    response = replay(client, command)
    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"/orders/{created['id']}"
    assert created["sku"] == "book-42"


def test_canary_keeps_each_user_on_one_side(demo: GatewayProcess, client: httpx.Client) -> None:
    def side(user: str) -> str:
        response = client.get(demo.url("/orders"), headers={"x-user": user})
        assert response.status_code == 200
        return str(response.json()["served_by"])

    sides = {user: side(user) for user in (f"user-{n}" for n in range(200))}
    canary_users = [user for user, name in sides.items() if name == "orders-v2"]
    assert 0 < len(canary_users) < 40  # about 5% of 200
    for user in ("alice", canary_users[0]):
        first = side(user)
        assert [side(user) for _ in range(20)] == [first] * 20, user


def test_tenant_header_routes_payments_to_the_tenant_instance(commands: list[CurlCommand],
                                                             client: httpx.Client) -> None:
    acme = replay(client, find(commands, "/payments", x_tenant="acme")).json()
    assert acme["served_by"] == "payments-acme"
    assert acme["tenant"] == "acme"
    shared = next(c for c in commands if c.path == "/payments" and "x-tenant" not in c.line)
    assert replay(client, shared).json()["served_by"] == "payments"


def test_catalog_answers_in_french_with_cache_headers(commands: list[CurlCommand], client: httpx.Client) -> None:
    response = replay(client, find(commands, "/catalog"))
    assert response.json()["language"] == "fr"
    assert response.headers["content-language"] == "fr"
    assert response.headers["cache-control"] == "max-age=30"
    again = replay(client, find(commands, "/catalog"))
    assert again.headers["x-cache-status"] == "HIT" and again.json() == response.json()


def test_rewrite_maps_the_public_path_to_the_service_path(demo: GatewayProcess, client: httpx.Client) -> None:
    # The users service only knows /users/{id}: an answer for /v1/users/alice proves the rewrite.
    user = client.get(demo.url("/v1/users/alice"))
    assert user.json() == {"id": "alice", "name": "Alice Martin", "email": "alice@example.com", "tier": "gold",
                           "served_by": "users"}
    unrouted = client.get(demo.url("/users/alice"))
    assert unrouted.status_code == 404
    assert unrouted.json()["error"] == "not_found"  # the gateway's error: no route, the service never saw it


def test_echo_shows_forwarding_headers_set_by_the_gateway(commands: list[CurlCommand], client: httpx.Client) -> None:
    command = find(commands, "/echo/hello")
    response = replay(client, command)
    echo = response.json()
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert echo["target"] == "/echo/hello?debug=1"
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the client's spoofed value is not believed
    assert headers["x-request-id"] == response.headers["x-request-id"]


def test_sse_events_arrive_one_by_one(commands: list[CurlCommand], client: httpx.Client) -> None:
    command = find(commands, "/recs/stream")
    assert command.no_buffer
    arrivals: list[tuple[float, dict[str, object]]] = []
    start = time.monotonic()
    with client.stream("GET", command.url) as response:
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic() - start, json.loads(line[6:])))
    assert [event["n"] for _, event in arrivals] == [1, 2, 3, 4, 5]
    # Unbuffered: the first event is here long before the last one is even sent (200 ms apart).
    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first >= 0.6, arrivals


def test_admin_status_is_json_about_the_running_gateway(commands: list[CurlCommand],
                                                       demo: GatewayProcess, client: httpx.Client) -> None:
    command = find(commands, "/status")
    assert f":{demo.admin_port}/" in command.url
    status = client.get(command.url).json()
    assert status["workers"] == 1
    assert {"orders", "payments-acme", "recs-stream"} <= set(status["routes"])
    assert {"orders-v1", "orders-v2", "payments-acme"} <= set(status["upstreams"])


def test_sigterm_stops_everything_with_exit_0(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    with running(["demo", "--port", str(port), "--admin-port", str(admin_port)], port, admin_port,
                 tmp_path / "demo.out") as demo:
        assert httpx.get(demo.url("/orders"), timeout=TIMEOUT).status_code == 200
        started = time.monotonic()
        assert demo.terminate(timeout=8) == 0
        assert time.monotonic() - started < 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/orders", timeout=TIMEOUT)


def test_a_taken_port_is_reported_with_a_way_out(demo: GatewayProcess) -> None:
    result = run_cli("demo", "--port", str(demo.port), "--admin-port", str(free_port()), timeout=15)
    assert result.returncode == 1
    assert f"port {demo.port} is already in use" in result.stderr
    assert "--port" in result.stderr


# --- the sample services on their own (what other integration tests rely on) ---------------------------


@pytest.fixture(scope="module")
def service_ports() -> Iterator[dict[str, int]]:
    thread = ServiceThread()
    try:
        yield thread.start(["orders", "payments", "catalog", "users", "recs"])
    finally:
        thread.stop()


def raw(port: int, data: bytes, responses: int, timeout: float = 5.0) -> bytes:
    """Send `data`, read until `responses` complete responses arrived (or the server closed)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(re.findall(rb"HTTP/1\.1 \d{3} ", received)) < responses:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        sock.settimeout(0.2)  # whatever else is already on its way
        with contextlib.suppress(TimeoutError):
            received += sock.recv(65536)
    return received


def test_echo_reports_the_request_exactly_as_received(service_ports: dict[str, int]) -> None:
    body = b"hello, chunked world"
    request = (b"POST /_echo/a/%2e%2e/b?x=1&y=two HTTP/1.1\r\nHost: svc\r\nX-Mixed-Case: One\r\n"
               b"x-dup: 1\r\nX-Dup: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"5\r\nhello\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n")
    response = raw(service_ports["orders"], request, 1)
    echo = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert echo["service"] == "orders"
    assert echo["method"] == "POST"
    assert echo["target"] == "/_echo/a/%2e%2e/b?x=1&y=two"
    assert (echo["path"], echo["query"], echo["args"]) == ("/_echo/a/%2e%2e/b", "x=1&y=two", {"x": "1", "y": "two"})
    assert echo["headers"][1:4] == [["X-Mixed-Case", "One"], ["x-dup", "1"], ["X-Dup", "2"]]
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["body"] == body.decode()
    assert echo["chunked"] is True
    assert echo["peer"].startswith("127.0.0.1:")


def test_pipelined_requests_on_one_connection_are_answered_in_order(service_ports: dict[str, int]) -> None:
    requests = (b"GET /orders/1002 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /_status/418 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                b"HEAD /orders HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    response = raw(service_ports["orders"], requests, 4)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", response) == [b"200", b"418", b"200", b"404"]
    assert b'"id": "1002"' in response
    assert response.count(b"Server: frontgate-demo-orders\r\n") == 4


def test_head_sends_the_get_headers_without_a_body(service_ports: dict[str, int]) -> None:
    url = f"http://127.0.0.1:{service_ports['catalog']}/catalog"
    with httpx.Client(timeout=TIMEOUT) as client:
        get, head = client.get(url), client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
    assert head.headers["cache-control"] == "max-age=30"


def test_bytes_streams_exactly_n_bytes_chunked(service_ports: dict[str, int]) -> None:
    n = 1_000_003
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.get(f"http://127.0.0.1:{service_ports['users']}/_bytes", params={"n": n, "chunk": 4096})
    assert response.headers["transfer-encoding"] == "chunked"
    pattern = b"0123456789abcdefghijklmnopqrstuvwxyz"
    assert response.content == (pattern * (n // len(pattern) + 1))[:n]


def test_status_and_slow_endpoints(service_ports: dict[str, int]) -> None:
    base = f"http://127.0.0.1:{service_ports['payments']}"
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(base + "/_status/503").status_code == 503
        assert client.post(base + "/_status/204").content == b""
        started = time.monotonic()
        assert client.get(base + "/_slow", params={"ms": 300}).json()["slept_ms"] == 300
        assert time.monotonic() - started >= 0.3


def test_every_service_names_itself_in_the_server_header(service_ports: dict[str, int]) -> None:
    with httpx.Client(timeout=TIMEOUT) as client:
        for name, port in service_ports.items():
            response = client.get(f"http://127.0.0.1:{port}/healthz")
            assert response.headers["server"] == f"frontgate-demo-{name}"
            assert response.json() == {"status": "ok", "served_by": name}
