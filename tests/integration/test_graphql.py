"""The graphql plugin in the real gateway, before a real upstream: queries within the limits reach it
unchanged; too deep, too costly, introspective or unlisted ones are answered at the edge."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.helpers import RecordingUpstream, RunningGateway, free_port, gateway_config, run_gateway

ALLOWED = ["query Me { me { id name orders(first: 5) { id } } }", "{ __typename }"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("graphql")
    allow = directory / "allow.json"
    allow.write_text(json.dumps(ALLOWED))
    routes = [
        {"name": "graphql", "match": {"exact": ["/graphql"], "methods": ["GET", "POST"]}, "to": "graph",
         "plugins": {"graphql": {"max_depth": 3, "max_cost": 40, "introspection": False}}},
        {"name": "persisted", "match": {"exact": ["/persisted"], "methods": ["POST"]}, "to": "graph",
         "plugins": {"graphql": {"persisted_queries": str(allow)}}},
    ]
    config = gateway_config(free_port(), free_port(), {"graph": [upstream.url]}, routes)
    with run_gateway(directory, config) as running:
        yield running


def _post(gateway: RunningGateway, path: str, payload: dict[str, object]) -> httpx.Response:
    return httpx.post(gateway.url(path), json=payload, timeout=10)


def test_a_query_within_the_limits_reaches_the_upstream_unchanged(gateway: RunningGateway,
                                                                  upstream: RecordingUpstream) -> None:
    payload = {"query": "query Q($n: Int) { me { orders(first: $n) { id total } } }", "variables": {"n": 5}}
    response = _post(gateway, "/graphql", payload)
    assert response.status_code == 200
    assert json.loads(upstream.requests[-1].body) == payload
    got = httpx.get(gateway.url("/graphql"), params={"query": "{ me { id } }"}, timeout=10)
    assert got.status_code == 200 and upstream.requests[-1].target.startswith("/graphql?query=")


def test_limits_are_enforced_at_the_edge(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    before = len(upstream.requests)
    deep = _post(gateway, "/graphql", {"query": "{ a { b { c { d } } } }"})
    assert deep.status_code == 400 and deep.json()["error"] == "query_too_deep"
    costly = _post(gateway, "/graphql", {"query": "{ users(first: 100) { id } }"})
    assert costly.status_code == 400 and costly.json()["error"] == "query_too_costly"
    schema = _post(gateway, "/graphql", {"query": "{ __schema { types { name } } }"})
    assert schema.status_code == 400 and schema.json()["error"] == "introspection_disabled"
    broken = _post(gateway, "/graphql", {"query": "{ me { "})
    assert broken.status_code == 400 and broken.json()["error"] == "invalid_graphql"
    assert broken.json()["request_id"]
    assert len(upstream.requests) == before


def test_only_persisted_queries_pass_where_they_are_required(gateway: RunningGateway,
                                                            upstream: RecordingUpstream) -> None:
    assert _post(gateway, "/persisted", {"query": ALLOWED[0]}).status_code == 200
    refused = _post(gateway, "/persisted", {"query": "query Me { me { id name password } }"})
    assert refused.status_code == 403 and refused.json()["error"] == "query_not_allowed"
    digest = hashlib.sha256(ALLOWED[1].encode()).hexdigest()
    by_digest = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": digest}}}
    assert _post(gateway, "/persisted", by_digest).status_code == 200
    assert json.loads(upstream.requests[-1].body) == by_digest  # the upstream resolves the digest
