"""Aggregate routes in the real gateway, against real upstreams: legs in parallel, each bounded by its own
timeout; values from the token, query and headers filled into the legs' paths; a failed optional leg is null
and named in Gateway-Partial; a failed required leg gives the SPEC's 503; auth runs before any leg."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.idp import Signer, claims
from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    json_response,
    run_gateway,
)

ISS = "https://idp.test/"
SECRET = "an-hmac-secret-of-at-least-32-bytes!"
SLOW = 2.0  # seconds the slow upstream takes, far beyond its leg's timeout


def _users(request: ReceivedRequest, _sock: object) -> bytes:
    return json_response(200, {"id": request.target.rsplit("/", 1)[1], "name": "Ada"})


def _orders(request: ReceivedRequest, _sock: object) -> bytes:
    query = parse_qs(urlsplit(request.target).query)
    return json_response(200, [{"order": 1, "user": query["user"][0], "limit": query["limit"][0]}])


def _slow(request: ReceivedRequest, _sock: object) -> bytes:
    time.sleep(SLOW)
    return json_response(200, ["too late"])


def _failing(request: ReceivedRequest, _sock: object) -> bytes:
    return json_response(500, {"error": "boom"})


def _text(request: ReceivedRequest, _sock: object) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, RecordingUpstream]]:
    servers = {name: RecordingUpstream(responder) for name, responder in
               {"users": _users, "orders": _orders, "recs": _slow, "wallet": _failing, "notes": _text}.items()}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            upstreams: dict[str, RecordingUpstream]) -> Iterator[RunningGateway]:
    jwt = {"keys": [SECRET], "algorithms": ["HS256"], "issuer": ISS}
    routes = [
        {"name": "home", "match": {"exact": ["/home"], "methods": ["GET"]}, "plugins": {"jwt": jwt},
         "aggregate": {
             "profile": {"upstream": "users", "path": "/users/{jwt.sub}", "required": True, "timeout": "1s"},
             "orders": {"upstream": "orders", "path": "/orders?user={jwt.sub}&limit=5", "required": True},
             "recs": {"upstream": "recs", "path": "/recs/{jwt.sub}", "timeout": "200ms"},
             "balance": {"upstream": "wallet", "path": "/balance/{jwt.sub}"},
         }},
        {"name": "must", "match": {"exact": ["/must"]},
         "aggregate": {"profile": {"upstream": "users", "path": "/users/{query.user}", "required": True},
                       "balance": {"upstream": "wallet", "path": "/balance/{query.user}", "required": True}}},
        {"name": "text", "match": {"exact": ["/text"]},
         "aggregate": {"profile": {"upstream": "users", "path": "/users/1", "required": True},
                       "notes": {"upstream": "notes", "path": "/notes"}}},
        {"name": "lookup", "match": {"exact": ["/lookup"]},
         "aggregate": {"profile": {"upstream": "users", "path": "/users/{header.x-user}", "required": True},
                       "by_query": {"upstream": "users", "path": "/users/{query.user}"}}},
        {"name": "slow-required", "match": {"exact": ["/slow"]}, "timeout": "300ms",
         "aggregate": {"recs": {"upstream": "recs", "path": "/recs", "required": True}}},
    ]
    upstream_urls = {name: [server.url] for name, server in upstreams.items()}
    config = gateway_config(free_port(), free_port(), upstream_urls, routes,
                            plugins={"request_id": {"header": "X-Request-Id"}})
    with run_gateway(tmp_path_factory.mktemp("aggregate"), config) as running:
        yield running


def _token(**extra: Any) -> str:
    return Signer.hmac(SECRET.encode()).token(claims(issuer=ISS, **extra))


def test_legs_run_in_parallel_and_failed_optional_ones_are_null_and_named(
        gateway: RunningGateway, upstreams: dict[str, RecordingUpstream]) -> None:
    started = time.monotonic()
    response = httpx.get(gateway.url("/home"), headers={"authorization": f"Bearer {_token(sub='ada/7')}",
                                                         "accept-encoding": "gzip"}, timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {
        "profile": {"id": "ada%2F7", "name": "Ada"},  # the claim is URL-encoded into the path
        "orders": [{"order": 1, "user": "ada/7", "limit": "5"}],
        "recs": None,  # slower than its 200 ms
        "balance": None,  # answered 500
    }
    assert response.headers["gateway-partial"] == "recs, balance"
    assert elapsed < SLOW  # the slow leg was not waited for
    profile_call = upstreams["users"].requests[-1]
    assert profile_call.method == "GET" and profile_call.target == "/users/ada%2F7"
    assert profile_call.header("x-forwarded-for") == "127.0.0.1"
    assert profile_call.header("accept") == "application/json"
    assert profile_call.header("accept-encoding") is None  # the leg must get a body it can read
    assert profile_call.header("authorization") is None  # the jwt plugin stripped the token
    assert profile_call.header("x-request-id") == response.headers["x-request-id"]


def test_a_failed_required_leg_fails_the_whole_response(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url("/must?user=ada"), timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "aggregate_unavailable" and body["failed"] == ["balance"]
    assert body["request_id"] == response.headers["x-request-id"]
    # Nothing of the upstream leaks: not its status, not its body (the request id is random hex: left out).
    leaked = response.text.replace(body["request_id"], "")
    assert "500" not in leaked and "boom" not in leaked


def test_a_required_leg_past_the_routes_timeout_gives_503_in_time(gateway: RunningGateway) -> None:
    started = time.monotonic()
    response = httpx.get(gateway.url("/slow"), timeout=10)
    assert response.status_code == 503 and response.json()["failed"] == ["recs"]
    assert time.monotonic() - started < SLOW


def test_values_come_from_headers_and_the_query_and_a_missing_one_fails_its_leg(
        gateway: RunningGateway, upstreams: dict[str, RecordingUpstream]) -> None:
    response = httpx.get(gateway.url("/lookup"), params={"user": "a b"}, headers={"x-user": "grace"}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"profile": {"id": "grace", "name": "Ada"}, "by_query": {"id": "a%20b", "name": "Ada"}}
    assert "gateway-partial" not in response.headers
    partial = httpx.get(gateway.url("/lookup"), headers={"x-user": "grace"}, timeout=10)
    assert partial.json()["by_query"] is None and partial.headers["gateway-partial"] == "by_query"
    missing = httpx.get(gateway.url("/lookup"), timeout=10)
    assert missing.status_code == 503 and missing.json()["failed"] == ["profile"]


def test_an_answer_that_is_not_json_counts_as_a_failed_leg(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url("/text"), timeout=10)
    assert response.status_code == 200
    assert response.json() == {"profile": {"id": "1", "name": "Ada"}, "notes": None}
    assert response.headers["gateway-partial"] == "notes"


def test_auth_runs_before_any_leg(gateway: RunningGateway, upstreams: dict[str, RecordingUpstream]) -> None:
    before = {name: len(server.requests) for name, server in upstreams.items()}
    response = httpx.get(gateway.url("/home"), timeout=10)
    assert response.status_code == 401
    assert {name: len(server.requests) for name, server in upstreams.items()} == before


def test_an_upstream_that_is_down_is_a_failed_leg(tmp_path_factory: pytest.TempPathFactory,
                                                  upstreams: dict[str, RecordingUpstream]) -> None:
    routes = [{"name": "home", "match": {"exact": ["/home"]},
               "aggregate": {"profile": {"upstream": "users", "path": "/users/1", "required": True},
                             "gone": {"upstream": "gone", "path": "/x"}}}]
    config = gateway_config(free_port(), free_port(),
                            {"users": [upstreams["users"].url], "gone": [f"http://127.0.0.1:{free_port()}"]}, routes)
    with run_gateway(tmp_path_factory.mktemp("down"), config) as gateway:
        response = httpx.get(gateway.url("/home"), timeout=10)
    assert response.status_code == 200
    assert response.json() == {"profile": {"id": "1", "name": "Ada"}, "gone": None}
    assert response.headers["gateway-partial"] == "gone"
