"""The graphql plugin's judgement of queries, without sockets: depth and cost with fragments and list
arguments, introspection, persisted queries by text and by digest, and the three ways a query is sent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest
from pydantic import ValidationError

from frontgate.config.schema import GatewayConfig
from frontgate.errors import HttpError
from frontgate.plugins.base import BuildContext
from frontgate.plugins.graphql import GraphqlConfig, GraphqlPlugin

DEEP = "{ a { b { c { d } } } }"  # depth 4, cost 4


def _plugin(**settings: Any) -> GraphqlPlugin:
    build = BuildContext(GatewayConfig.model_validate({"version": 1, "upstreams": {}, "routes": []}))
    return GraphqlPlugin(GraphqlConfig(**settings), None, build)


def _ctx(method: str = "POST", content_type: str = "application/json", query: str = "") -> Any:
    headers = {b"content-type": content_type.encode()}
    return SimpleNamespace(method=method, query=query.encode(), header=headers.get)


def _send(plugin: GraphqlPlugin, query: str | None = None, **fields: Any) -> str | None:
    """None when the plugin lets the request through, else the error code it answers with."""
    body = json.dumps({"query": query, **fields} if query is not None else fields).encode()
    try:
        plugin.on_body(_ctx(), body)
    except HttpError as error:
        return error.code
    return None


def test_depth_counts_nested_fields_through_fragments() -> None:
    plugin = _plugin(max_depth=3)
    assert _send(plugin, "{ a { b { c } } }") is None
    assert _send(plugin, DEEP) == "query_too_deep"
    fragments = "query { a { ...F } } fragment F on T { b { ... on U { c { d } } } }"
    assert _send(plugin, fragments) == "query_too_deep"


def test_cost_counts_fields_and_multiplies_by_list_arguments_and_variables() -> None:
    plugin = _plugin(max_cost=50)
    assert _send(plugin, "{ users(first: 10) { id name } }") is None  # 1 + 10 * 2 = 21
    assert _send(plugin, "{ users(first: 30) { id name } }") == "query_too_costly"  # 61
    query = "query Q($n: Int) { users(limit: $n) { id name } }"
    assert _send(plugin, query, variables={"n": 10}) is None
    assert _send(plugin, query, variables={"n": 100}) == "query_too_costly"


def test_introspection_can_be_refused_but_typename_stays() -> None:
    closed = _plugin(introspection=False)
    assert _send(closed, "{ __schema { types { name } } }") == "introspection_disabled"
    assert _send(closed, "{ a { __type(name: \"X\") { name } } }") == "introspection_disabled"
    assert _send(closed, "{ a { __typename id } }") is None
    assert _send(_plugin(), "{ __schema { types { name } } }") is None


def test_only_the_named_operation_is_measured() -> None:
    plugin = _plugin(max_depth=2)
    document = "query Small { a { b } } query Big " + DEEP
    assert _send(plugin, document, operationName="Small") is None
    assert _send(plugin, document, operationName="Big") == "query_too_deep"
    assert _send(plugin, document, operationName="Missing") == "invalid_graphql"


def test_what_is_not_a_graphql_query_is_refused() -> None:
    plugin = _plugin(max_depth=5)
    assert _send(plugin, "{ a { ") == "invalid_graphql"
    assert _send(plugin, variables={}) == "invalid_graphql"  # no query
    assert _send(plugin, "query { a { ...Loop } } fragment Loop on T { b { ...Loop } }") == "invalid_graphql"
    try:
        plugin.on_body(_ctx(), b"[1, 2]")
    except HttpError as error:
        assert error.code == "invalid_graphql" and error.status == 400


def test_persisted_queries_by_text_or_digest(tmp_path: Path) -> None:
    allowed = "{ me { id } }"
    digest = hashlib.sha256(allowed.encode()).hexdigest()
    as_list, as_map = tmp_path / "list.json", tmp_path / "map.json"
    as_list.write_text(json.dumps([allowed]))
    as_map.write_text(json.dumps({digest: allowed}))
    for path in (as_list, as_map):
        plugin = _plugin(persisted_queries=str(path))
        assert _send(plugin, allowed) is None
        assert _send(plugin, "{ me { id secret } }") == "query_not_allowed"
        assert _send(plugin, extensions={"persistedQuery": {"version": 1, "sha256Hash": digest}}) is None
        assert _send(plugin, extensions={"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}) \
            == "query_not_allowed"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"0" * 64: allowed}))
    with pytest.raises(ValidationError, match="is not the SHA-256 of its query"):
        GraphqlConfig(persisted_queries=str(wrong))


def test_a_query_may_come_as_graphql_text_or_in_a_get() -> None:
    plugin = _plugin(max_depth=3)
    with pytest.raises(HttpError, match="levels deep"):
        plugin.on_body(_ctx(content_type="application/graphql"), DEEP.encode())
    assert plugin.on_body(_ctx(content_type="application/graphql"), b"{ a { b } }") is None
    shallow = urlencode({"query": "query($x: Int) { a(first: $x) { b } }", "variables": json.dumps({"x": 2})})
    assert plugin.on_body(_ctx("GET", query=shallow), b"") is None
    with pytest.raises(HttpError, match="levels deep"):
        plugin.on_body(_ctx("GET", query=urlencode({"query": DEEP})), b"")


def test_nesting_deeper_than_the_stack_is_refused_not_crashed() -> None:
    plugin = _plugin(max_depth=5)
    # graphql-core itself may refuse it first: either way a 400, never a crash
    assert _send(plugin, "{" + "a{" * 3000 + "b" + "}" * 3001) in {"query_too_deep", "invalid_graphql"}
    try:
        plugin.on_body(_ctx(), b'{"query": "{ a }", "variables": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    except HttpError as error:
        assert error.status == 400
    else:
        raise AssertionError("a body nested 100,000 deep was let through")
