"""gRPC upstreams: frontgate's HTTP/2 client side against a real grpcio server.

Most tests drive the upstream side directly, as the exchange does (tests/grpc/driver.py); the last ones go
through a real gateway with an HTTP/1.1 client.
"""

from __future__ import annotations

import asyncio
import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import httpx
import pytest

from frontgate.upstream.errors import UpstreamConnectError
from frontgate.upstream.h2connection import STREAM_WINDOW
from tests.grpc.driver import WAIT, Received, call, grpc_head, h2_pool, run, take_stream
from tests.grpc.notes import NotesServer, compile_notes, frame, self_signed, unframe
from tests.integration.helpers import free_port, gateway_config, run_gateway
from tests.integration.observability_helpers import scrape, wait_until

Notes = tuple[ModuleType, ModuleType]


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Notes:
    return compile_notes(tmp_path_factory.mktemp("notes"))


@pytest.fixture
def server(notes: Notes) -> Iterator[NotesServer]:
    running = NotesServer(*notes)
    yield running
    running.stop(0)


def _note(notes: Notes, **fields: Any) -> Any:
    return notes[0].Note(**fields)


def _replies(notes: Notes, received: Received) -> list[Any]:
    return [notes[0].Note.FromString(message) for message in unframe(bytes(received.body))]


# --- unary ---------------------------------------------------------------------------------------------


def test_a_unary_call_relays_metadata_both_ways_and_the_trailers(notes: Notes, server: NotesServer) -> None:
    async def main() -> Received:
        pool = h2_pool(server.port)
        return await call(pool, grpc_head("Echo", server.port, {"x-note-tag": "blue"}),
                          [frame(_note(notes, text="hello", count=7))])

    received = run(main)
    assert received.error is None and received.completed is True
    assert received.status == 200
    assert received.header("content-type") == "application/grpc"
    assert received.header("x-note-tag-echo") == "blue"  # request metadata reached the service
    (reply,) = _replies(notes, received)
    assert (reply.text, reply.count) == ("hello", 7)
    assert received.trailer("grpc-status") == "0"
    assert received.trailer("x-note-trailer") == "done-blue"  # trailing metadata came back as trailers
    assert received.grpc_status == 0
    assert not any(line.startswith(b":") for line in received.lines + (received.trailers or []))


def test_the_gateway_deadline_reaches_the_service_as_grpc_timeout(notes: Notes, server: NotesServer) -> None:
    async def main() -> Received:
        return await call(h2_pool(server.port), grpc_head("Echo", server.port, deadline_ms=950),
                          [frame(_note(notes, text="when"))])

    (reply,) = _replies(notes, run(main))
    assert 500 < reply.deadline_ms <= 950


def test_a_shorter_client_grpc_timeout_is_kept(notes: Notes, server: NotesServer) -> None:
    async def main() -> Received:
        return await call(h2_pool(server.port), grpc_head("Echo", server.port, {"grpc-timeout": "300m"}),
                          [frame(_note(notes, text="when"))])

    (reply,) = _replies(notes, run(main))
    assert 0 < reply.deadline_ms <= 300


def test_the_service_enforces_the_deadline(notes: Notes, server: NotesServer) -> None:
    async def main() -> Received:
        return await call(h2_pool(server.port), grpc_head("Echo", server.port, deadline_ms=200),
                          [frame(_note(notes, text="slow", count=1000))])

    received = run(main)
    assert received.grpc_status == 4  # DEADLINE_EXCEEDED, decided by the service from grpc-timeout


def test_a_status_error_arrives_trailers_only_with_its_message(notes: Notes, server: NotesServer) -> None:
    async def main() -> Received:
        return await call(h2_pool(server.port), grpc_head("Echo", server.port),
                          [frame(_note(notes, text="missing-7"))])

    received = run(main)
    assert received.completed is True and received.status == 200
    assert received.header("grpc-status") == "5"  # NOT_FOUND
    assert received.header("grpc-message") == "no note called missing-7"
    assert received.grpc_status == 5
    assert received.content_length == 0 and received.body == b"" and received.trailers is None


def test_a_crashing_handler_is_unknown(notes: Notes, server: NotesServer) -> None:
    async def main() -> Received:
        return await call(h2_pool(server.port), grpc_head("Echo", server.port), [frame(_note(notes, text="crash"))])

    assert run(main).grpc_status == 2  # UNKNOWN


# --- streaming -----------------------------------------------------------------------------------------


def test_server_streaming_relays_every_message(notes: Notes, server: NotesServer) -> None:
    async def main() -> Received:
        return await call(h2_pool(server.port), grpc_head("Split", server.port),
                          [frame(_note(notes, text="part", count=25))])

    received = run(main)
    assert [reply.text for reply in _replies(notes, received)] == [f"part-{i}" for i in range(25)]
    assert received.grpc_status == 0


def test_client_streaming_sends_every_message(notes: Notes, server: NotesServer) -> None:
    async def pause(received: Received) -> None:
        await asyncio.sleep(0.01)  # separate DATA frames, as a client streaming over time sends them

    async def main() -> Received:
        body = [frame(_note(notes, text=f"n{i}")) for i in range(10)]
        return await call(h2_pool(server.port), grpc_head("Collect", server.port), body, between=pause)

    (reply,) = _replies(notes, run(main))
    assert (reply.text, reply.count) == ("+".join(f"n{i}" for i in range(10)), 10)


def test_bidirectional_streaming_answers_each_message_before_the_next_is_sent(
        notes: Notes, server: NotesServer) -> None:
    async def main() -> tuple[Received, list[int]]:
        seen: list[int] = []

        async def wait_for_answer(received: Received) -> None:
            expected = len(seen) + 1
            while len(unframe(bytes(received.body))) < expected:
                received.body_grew.clear()
                await asyncio.wait_for(received.body_grew.wait(), WAIT)
            seen.append(expected)

        body = [frame(_note(notes, text=f"word{i}", count=i)) for i in range(5)]
        received = await call(h2_pool(server.port), grpc_head("Chat", server.port), body, between=wait_for_answer)
        return received, seen

    received, seen = run(main)
    assert seen == [1, 2, 3, 4, 5]  # each answer came while the request stream was still open
    assert [reply.text for reply in _replies(notes, received)] == [f"WORD{i}" for i in range(5)]
    assert received.grpc_status == 0


# --- connections, concurrency, flow control ------------------------------------------------------------


def test_concurrent_calls_share_one_connection(notes: Notes, server: NotesServer) -> None:
    async def main() -> tuple[list[Received], int]:
        pool = h2_pool(server.port)
        await call(pool, grpc_head("Echo", server.port), [frame(_note(notes, text="warm"))])
        results = await asyncio.gather(*(
            call(pool, grpc_head("Echo", server.port), [frame(_note(notes, text=f"c{i}", count=i))])
            for i in range(30)))
        return list(results), pool.connects

    results, connects = run(main)
    assert connects == 1
    assert [_replies(notes, r)[0].count for r in results] == list(range(30))


def test_streams_beyond_the_peers_limit_go_to_another_connection(notes: Notes) -> None:
    server = NotesServer(*notes, **{"grpc.max_concurrent_streams": 2})
    try:
        async def main() -> tuple[list[Received], int]:
            pool = h2_pool(server.port)
            await call(pool, grpc_head("Echo", server.port), [frame(_note(notes, text="warm"))])  # SETTINGS known
            results = await asyncio.gather(*(
                call(pool, grpc_head("Echo", server.port), [frame(_note(notes, text="slow", count=200))])
                for _ in range(5)))
            return list(results), pool.connects

        results, connects = run(main)
    finally:
        server.stop(0)
    assert all(r.grpc_status == 0 for r in results)
    assert connects == 3  # five calls, two streams per connection


def test_large_messages_both_ways_pass_through_the_flow_control_windows(notes: Notes, server: NotesServer) -> None:
    payload = bytes(range(256)) * (8 * 1024 * 1024 // 256)

    async def main() -> Received:
        return await call(h2_pool(server.port), grpc_head("Echo", server.port),
                          [frame(_note(notes, text="big", payload=payload))])

    received = run(main)
    (reply,) = _replies(notes, received)
    assert reply.payload == payload
    # 8 MiB cannot go out at once: the client side was paused, then resumed.
    assert received.write_paused[0] is True and received.write_paused[-1] is False


def test_a_paused_reader_holds_at_most_one_stream_window(notes: Notes, server: NotesServer) -> None:
    message = frame(_note(notes, text="part", count=64, payload=b"p" * 65536))
    total_messages = 64

    async def main() -> tuple[int, Received]:
        pool = h2_pool(server.port)
        stream = await take_stream(pool)
        received = Received()
        received.on_body = lambda data: stream.pause_reading()  # a client that stopped reading
        stream.start(received, grpc_head("Split", server.port), False, True)
        stream.write(message)
        stream.end_body()
        await asyncio.wait_for(received.body_grew.wait(), WAIT)
        await asyncio.sleep(0.5)
        held = len(received.body)
        received.on_body = None
        stream.resume_reading()
        await asyncio.wait_for(received.done.wait(), WAIT)
        pool.release(stream, True)
        return held, received

    held, received = run(main)
    assert held <= STREAM_WINDOW
    assert len(_replies(notes, received)) == total_messages and received.grpc_status == 0


def test_a_request_body_beyond_the_window_pauses_the_client_until_the_service_reads(
        notes: Notes, server: NotesServer) -> None:
    async def main() -> Received:
        # 16 MiB written at once, as a fast client's body arrives: more than grpcio's windows take.
        body = [frame(_note(notes, text=f"n{i}", payload=b"q" * 1024 * 1024)) for i in range(16)]
        return await call(h2_pool(server.port), grpc_head("Collect", server.port), body)

    received = run(main)
    (reply,) = _replies(notes, received)
    assert reply.count == 16
    assert received.write_paused[0] is True and received.write_paused[-1] is False
    assert received.write_paused.count(True) == received.write_paused.count(False)


def test_a_connection_left_without_streams_closes_after_the_idle_timeout(notes: Notes, server: NotesServer) -> None:
    async def main() -> tuple[int, str, str]:
        pool = h2_pool(server.port, idle_timeout=0.05)
        await call(pool, grpc_head("Echo", server.port), [frame(_note(notes, text="once"))])
        before = repr(pool)
        await asyncio.sleep(0.1)
        pool.expire_idle(time.monotonic())
        await asyncio.sleep(0.1)  # GOAWAY sent, the socket closes
        return pool.idle_count, before, repr(pool)

    idle, before, after = run(main)
    assert "connections=1 streams=0" in before
    assert idle == 0 and "connections=0" in after


# --- endings -------------------------------------------------------------------------------------------


def test_a_graceful_server_shutdown_lets_streams_in_flight_finish(notes: Notes, server: NotesServer) -> None:
    async def main() -> tuple[Received, bool, int]:
        pool = h2_pool(server.port)
        stream = await take_stream(pool)
        received = Received()
        stream.start(received, grpc_head("Split", server.port), False, True)
        stream.write(frame(_note(notes, text="slow", count=10)))
        stream.end_body()
        await asyncio.wait_for(received.body_grew.wait(), WAIT)
        threading.Thread(target=server.stop, args=(5,), daemon=True).start()  # GOAWAY, then wait for calls
        await asyncio.sleep(0.2)
        offered = pool.take_idle() is not None
        await asyncio.wait_for(received.done.wait(), WAIT)
        pool.release(stream, True)
        return received, offered, len(_replies(notes, received))

    received, offered, count = run(main)
    assert received.error is None and received.grpc_status == 0 and count == 10
    assert not offered  # no new stream goes to a connection the server is closing


def test_an_exchange_that_gives_up_cancels_the_call_and_the_connection_lives_on(
        notes: Notes, server: NotesServer) -> None:
    async def main() -> tuple[Received, int]:
        pool = h2_pool(server.port)
        stream = await take_stream(pool)
        stream.start(Received(), grpc_head("Echo", server.port), False, True)
        stream.write(frame(_note(notes, text="slow", count=3000)))
        stream.end_body()
        await asyncio.sleep(0.2)
        stream.detach()  # what the exchange does when its client leaves or its timeout passes
        pool.release(stream, False)
        after = await call(pool, grpc_head("Echo", server.port), [frame(_note(notes, text="next"))])
        return after, pool.connects

    after, connects = run(main)
    deadline = time.monotonic() + 5
    while not server.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.cancelled == ["slow"]  # the service stopped working on it (RST_STREAM CANCEL)
    assert after.grpc_status == 0 and connects == 1


def test_an_unreachable_target_is_a_connect_error() -> None:
    async def main() -> None:
        await h2_pool(free_port()).connect()

    with pytest.raises(UpstreamConnectError):
        run(main)


# --- through the gateway, HTTP/1.1 clients -------------------------------------------------------------


def test_an_http1_client_reaches_a_grpc_upstream_and_the_grpc_status_is_logged_and_counted(
        tmp_path: Path, notes: Notes, server: NotesServer) -> None:
    routes = [{"name": "notes", "match": {"paths": ["/frontgate.test.Notes"]}, "to": "notes"}]
    config = gateway_config(free_port(), free_port(), {"notes": [server.url]}, routes,
                            observability={"access_log": {"to": "stdout"}})
    config["upstreams"]["notes"]["protocol"] = "grpc"
    grpc_request = {"content-type": "application/grpc", "x-note-tag": "green"}
    with run_gateway(tmp_path, config) as gateway:
        url = gateway.url("/frontgate.test.Notes/Echo")
        ok = httpx.post(url, content=frame(_note(notes, text="hi")), headers=grpc_request, timeout=10)
        missing = httpx.post(url, content=frame(_note(notes, text="missing-1")),
                             headers={"content-type": "application/grpc"}, timeout=10)
        wait_until(lambda: len(gateway.access_log()) >= 2, timeout=5)
        lines = gateway.access_log()
        metrics = scrape(gateway)

    assert ok.status_code == 200 and ok.headers["x-note-tag-echo"] == "green"
    (reply,) = unframe(ok.content)
    assert notes[0].Note.FromString(reply).text == "hi"
    assert "grpc-status" not in ok.headers  # it came as a trailer, which HTTP/1.1 responses do not carry
    # A trailers-only error has its status in the head, so an HTTP/1.1 client sees it.
    assert missing.status_code == 200 and missing.headers["grpc-status"] == "5"
    assert missing.headers["grpc-message"] == "no note called missing-1"
    assert [line["grpc_status"] for line in lines] == [0, 5]
    assert metrics.value("frontgate_grpc_responses_total", route="notes", upstream="notes", grpc_status="OK") == 1
    assert metrics.value("frontgate_grpc_responses_total", grpc_status="NOT_FOUND") == 1


def test_an_https_grpc_target_is_reached_over_tls_with_alpn_h2(tmp_path: Path, notes: Notes) -> None:
    cert, key = self_signed(tmp_path)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server = NotesServer(*notes, credentials=credentials)
    routes = [{"name": "notes", "match": {"paths": ["/frontgate.test.Notes"]}, "to": "notes"}]
    config = gateway_config(free_port(), free_port(), {"notes": [server.url]}, routes)
    config["upstreams"]["notes"].update(protocol="grpc", tls={"ca": str(cert)})
    try:
        with run_gateway(tmp_path, config) as gateway:
            response = httpx.post(gateway.url("/frontgate.test.Notes/Echo"), content=frame(_note(notes, text="tls")),
                                  headers={"content-type": "application/grpc"}, timeout=10)
    finally:
        server.stop(0)
    assert response.status_code == 200
    assert notes[0].Note.FromString(unframe(response.content)[0]).text == "tls"


def test_a_tls_target_that_does_not_offer_h2_is_a_502(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls_upstream = _tls_http1_server(cert, key)
    routes = [{"name": "notes", "match": {"paths": ["/frontgate.test.Notes"]}, "to": "notes"}]
    config = gateway_config(free_port(), free_port(), {"notes": [f"https://127.0.0.1:{tls_upstream.server_port}"]},
                            routes)
    config["upstreams"]["notes"].update(protocol="grpc", tls={"ca": str(cert)})
    try:
        with run_gateway(tmp_path, config) as gateway:
            response = httpx.post(gateway.url("/frontgate.test.Notes/Echo"), content=b"\0\0\0\0\0",
                                  headers={"content-type": "application/grpc"}, timeout=10)
    finally:
        tls_upstream.shutdown()
    assert response.status_code == 502
    assert response.json()["message"] == "The upstream service does not speak HTTP/2."


def _tls_http1_server(cert: Path, key: Path) -> http.server.ThreadingHTTPServer:
    """An HTTPS server that offers only http/1.1 in ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_grpc_targets_are_health_checked_with_the_grpc_health_protocol(
        tmp_path: Path, notes: Notes, server: NotesServer) -> None:
    routes = [{"name": "notes", "match": {"paths": ["/frontgate.test.Notes"]}, "to": "notes"}]
    config = gateway_config(free_port(), free_port(), {"notes": [server.url]}, routes)
    config["upstreams"]["notes"].update(protocol="grpc", health_check={
        "interval": "100ms", "timeout": "1s", "unhealthy_after": 1, "healthy_after": 1})

    def status() -> int:
        return httpx.post(gateway.url("/frontgate.test.Notes/Echo"), content=frame(_note(notes, text="up?")),
                          headers={"content-type": "application/grpc"}, timeout=10).status_code

    with run_gateway(tmp_path, config) as gateway:
        assert status() == 200
        server.serving = False
        wait_until(lambda: status() == 503, timeout=5)  # NOT_SERVING: taken out
        server.serving = True
        wait_until(lambda: status() == 200, timeout=5)  # SERVING again: put back
