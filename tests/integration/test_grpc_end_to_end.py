"""gRPC end to end: a real grpcio client -> the gateway (h2c) -> a real grpcio server."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import pytest

from tests.grpc.notes import NotesServer, compile_notes
from tests.integration.helpers import RunningGateway, free_port, gateway_config, run_gateway
from tests.integration.observability_helpers import OtlpCollector, scrape, wait_until

Notes = tuple[ModuleType, ModuleType]


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Notes:
    return compile_notes(tmp_path_factory.mktemp("notes"))


@pytest.fixture(scope="module")
def server(notes: Notes) -> Iterator[NotesServer]:
    running = NotesServer(*notes)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, server: NotesServer) -> Iterator[RunningGateway]:
    port = free_port()
    routes = [{"name": "notes", "match": {"paths": ["/frontgate.test.Notes"]}, "to": "notes", "timeout": "5s"}]
    config = gateway_config(port, free_port(), {"notes": [server.url]}, routes,
                            observability={"access_log": {"to": "stdout"}})
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}", "h2c": True}]
    config["upstreams"]["notes"]["protocol"] = "grpc"
    with run_gateway(tmp_path_factory.mktemp("gateway"), config) as running:
        yield running


@pytest.fixture
def stub(notes: Notes, gateway: RunningGateway) -> Iterator[Any]:
    options = [("grpc.max_receive_message_length", 32 * 1024 * 1024),
               ("grpc.max_send_message_length", 32 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{gateway.port}", options=options) as channel:
        yield notes[1].NotesStub(channel)


def _note(notes: Notes, **fields: Any) -> Any:
    return notes[0].Note(**fields)


def test_a_unary_call_with_metadata_both_ways(notes: Notes, stub: Any) -> None:
    reply, call = stub.Echo.with_call(_note(notes, text="hello", count=3), metadata=[("x-note-tag", "red")],
                                      timeout=10)
    assert (reply.text, reply.count) == ("hello", 3)
    assert ("x-note-tag-echo", "red") in call.initial_metadata()
    assert ("x-note-trailer", "done-red") in call.trailing_metadata()
    assert call.code() == grpc.StatusCode.OK


def test_a_status_error_reaches_the_client_with_its_message(notes: Notes, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Echo(_note(notes, text="missing-9"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no note called missing-9"


def test_a_status_error_after_metadata_reaches_the_client(notes: Notes, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Echo(_note(notes, text="missing-3"), metadata=[("x-note-tag", "late")], timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("x-note-trailer", "done-late") in raised.value.trailing_metadata()


def test_server_streaming(notes: Notes, stub: Any) -> None:
    replies = list(stub.Split(_note(notes, text="s", count=20), timeout=10))
    assert [r.text for r in replies] == [f"s-{i}" for i in range(20)]


def test_client_streaming(notes: Notes, stub: Any) -> None:
    reply = stub.Collect(iter([_note(notes, text=f"c{i}") for i in range(12)]), timeout=10)
    assert (reply.text, reply.count) == ("+".join(f"c{i}" for i in range(12)), 12)


def test_bidirectional_streaming_in_lockstep(notes: Notes, stub: Any) -> None:
    import queue

    outgoing: queue.Queue[Any] = queue.Queue()

    def requests() -> Iterator[Any]:
        while (item := outgoing.get(timeout=10)) is not None:
            yield item

    responses = stub.Chat(requests(), timeout=10)
    answers = []
    for i in range(5):
        outgoing.put(_note(notes, text=f"w{i}", count=i))
        answers.append(next(responses).text)  # the answer comes before the next message is sent
    outgoing.put(None)
    assert answers == [f"W{i}" for i in range(5)] and list(responses) == []


def test_large_messages_both_ways(notes: Notes, stub: Any) -> None:
    payload = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    reply = stub.Echo(_note(notes, text="big", payload=payload), timeout=20)
    assert reply.payload == payload


def test_the_route_timeout_reaches_the_service_as_its_deadline(notes: Notes, stub: Any) -> None:
    reply = stub.Echo(_note(notes, text="when"), timeout=10)
    assert 4000 < reply.deadline_ms <= 5000  # the route's 5s, shorter than the client's 10s
    reply = stub.Echo(_note(notes, text="when"), timeout=1)
    assert 0 < reply.deadline_ms <= 1100  # the client's own, shorter deadline (grpc-core rounds it up a little)


def test_a_call_past_its_deadline_is_deadline_exceeded(notes: Notes, stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Echo(_note(notes, text="slow", count=2000), timeout=0.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_statuses_are_in_the_access_log_and_metrics(notes: Notes, stub: Any, gateway: RunningGateway) -> None:
    stub.Echo(_note(notes, text="counted"), metadata=[("x-note-tag", "log-me")], timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Echo(_note(notes, text="missing-counted"), timeout=10)
    wait_until(lambda: any(line["path"] == "/frontgate.test.Notes/Echo" and line["grpc_status"] == 5
                           for line in gateway.access_log()), timeout=5)
    statuses = {line["grpc_status"] for line in gateway.access_log() if line["path"] == "/frontgate.test.Notes/Echo"}
    assert {0, 5} <= statuses
    metrics = scrape(gateway)
    assert metrics.value("frontgate_grpc_responses_total", route="notes", grpc_status="OK") >= 1
    assert metrics.value("frontgate_grpc_responses_total", route="notes", grpc_status="NOT_FOUND") >= 1


def test_a_gateway_error_to_a_grpc_client_is_logged_with_the_status_it_sent(
        gateway: RunningGateway, stub: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary("/nowhere.Service/Method")(b"", timeout=10)  # no route: 404
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    wait_until(lambda: any(line["path"] == "/nowhere.Service/Method" for line in gateway.access_log()), timeout=5)
    (line,) = [line for line in gateway.access_log() if line["path"] == "/nowhere.Service/Method"]
    assert (line["status"], line["grpc_status"]) == (404, 12)


def test_the_client_span_of_a_grpc_call_says_http2_and_the_grpc_status(
        tmp_path_factory: pytest.TempPathFactory, notes: Notes, server: NotesServer) -> None:
    collector = OtlpCollector()
    port = free_port()
    routes = [{"name": "notes", "match": {"paths": ["/frontgate.test.Notes"]}, "to": "notes"}]
    tracing = {"otlp_endpoint": collector.endpoint, "sample_ratio": 1.0}
    config = gateway_config(port, free_port(), {"notes": [server.url]}, routes, observability={"tracing": tracing})
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}", "h2c": True}]
    config["upstreams"]["notes"]["protocol"] = "grpc"
    try:
        with run_gateway(tmp_path_factory.mktemp("traced"), config), \
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError):
                notes[1].NotesStub(channel).Echo(_note(notes, text="missing-traced"), timeout=10)
            spans = collector.wait_for(2)
    finally:
        collector.close()
    (client,) = [span for span in spans if span.kind == OtlpCollector.CLIENT]
    assert client.attributes["network.protocol.version"] == "2"
    assert client.attributes["rpc.grpc.status_code"] == 5
