"""graphql: bound what a GraphQL query may ask for, at the edge, before the GraphQL server parses it.

    graphql: {max_depth: 10, max_cost: 1000, persisted_queries: queries/allow.json, introspection: false}

The request's query is read as GraphQL servers read it: a POST body `{"query": ..., "operationName": ...,
"variables": ...}` (`application/json`), a POST body that is the query itself (`application/graphql`), or
a GET's `query`, `operationName` and `variables` parameters. It is parsed with graphql-core, then:

- `max_depth`: the deepest field, fragments followed (`{ a { b } }` is 2), may not be deeper; 400
  `query_too_deep`.
- `max_cost`: every field costs 1, and a field with an integer `first`, `last` or `limit` argument (a
  variable's value counts) multiplies what its selection costs by it; 400 `query_too_costly`.
- `introspection: false`: `__schema` and `__type` are refused (400 `introspection_disabled`);
  `__typename` stays allowed.
- `persisted_queries`: a JSON file of allowed queries, either a list of query texts or an object whose keys
  are their SHA-256 hex digests. A request's query must be one of them, compared by the SHA-256 of its exact
  text. A request may also send only the digest, as Apollo's automatic persisted queries do
  (`extensions.persistedQuery.sha256Hash`); the upstream resolves it. Anything else: 403
  `query_not_allowed`.
- A body or query that is not GraphQL: 400 `invalid_graphql`.

Only the operation named by `operationName` is measured when there are several; otherwise all of them.
The request goes upstream unchanged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qsl

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    parse,
)
from pydantic import Field, field_validator

from frontgate.config.schema import Route, Size
from frontgate.errors import HttpError
from frontgate.pipeline.context import Reply, RequestContext
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig
from frontgate.plugins.shared import BodyRefused, media_type, read_json_file

_LIST_ARGUMENTS = frozenset({"first", "last", "limit"})
_INTROSPECTION = frozenset({"__schema", "__type"})


class GraphqlRefused(BodyRefused):
    code = "invalid_graphql"
    message = "The request is not a GraphQL query this endpoint accepts."


class QueryNotAllowed(HttpError):
    status, code = 403, "query_not_allowed"
    message = "Only the persisted queries of this API may be sent."


def _refused(code: str, message: str) -> GraphqlRefused:
    error = GraphqlRefused(message)
    error.code = code
    return error


def load_allowed(path: str) -> frozenset[str]:
    """The SHA-256 hex digests of the allowed queries in a persisted-queries file."""
    data = read_json_file(path, "persisted_queries")
    if isinstance(data, list) and all(isinstance(q, str) for q in data):
        return frozenset(hashlib.sha256(q.encode()).hexdigest() for q in data)
    if isinstance(data, dict) and all(isinstance(k, str) for k in data):
        for digest, query in data.items():
            if isinstance(query, str) and hashlib.sha256(query.encode()).hexdigest() != digest.lower():
                raise ValueError(f"persisted_queries {path!r}: the key {digest[:16]}... is not the SHA-256 of its "
                                 "query")
        return frozenset(k.lower() for k in data)
    raise ValueError(f"persisted_queries {path!r}: expected a list of queries or an object of digest: query")


class GraphqlConfig(PluginConfig):
    max_depth: int | None = Field(None, ge=1, description="Deepest field allowed (fragments followed).")
    max_cost: int | None = Field(None, ge=1, description="Fields, multiplied by first/last/limit arguments.")
    persisted_queries: str | None = Field(None, description="A JSON file of the only queries allowed.")
    introspection: bool = Field(True, description="Allow __schema and __type.")
    body_limit: Size = Field(1024 * 1024, gt=0, description="Largest body read; 413 beyond.")

    @field_validator("persisted_queries")
    @classmethod
    def _allowed(cls, value: str | None) -> str | None:
        if value is not None:
            load_allowed(value)
        return value


class _Measure:
    """Depth, cost and introspection of one operation, fragments followed (and cycles among them refused)."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode], variables: dict[str, Any]) -> None:
        self.fragments = fragments
        self.variables = variables
        self.introspection = False

    def selection(self, selection_set: SelectionSetNode | None, depth: int, seen: frozenset[str]
                  ) -> tuple[int, int]:
        """(deepest depth, cost) of a selection set whose fields sit at `depth`."""
        if selection_set is None:
            return depth - 1, 0
        deepest, cost = depth, 0
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                if node.name.value in _INTROSPECTION:
                    self.introspection = True
                below, below_cost = self.selection(node.selection_set, depth + 1, seen)
                deepest = max(deepest, below)
                cost += 1 + below_cost * self._multiplier(node)
            else:
                if isinstance(node, FragmentSpreadNode):
                    name = node.name.value
                    fragment = self.fragments.get(name)
                    if fragment is None:
                        raise _refused("invalid_graphql", f"Unknown fragment {name!r}.")
                    if name in seen:
                        raise _refused("invalid_graphql", f"Fragment {name!r} spreads itself.")
                    inner, seen_inner = fragment.selection_set, seen | {name}
                else:
                    assert isinstance(node, InlineFragmentNode)
                    inner, seen_inner = node.selection_set, seen
                below, below_cost = self.selection(inner, depth, seen_inner)
                deepest = max(deepest, below)
                cost += below_cost
        return deepest, cost

    def _multiplier(self, node: FieldNode) -> int:
        for argument in node.arguments or ():
            if argument.name.value in _LIST_ARGUMENTS:
                value = argument.value
                if isinstance(value, IntValueNode):
                    return max(1, int(value.value))
                if isinstance(value, VariableNode):
                    given = self.variables.get(value.name.value)
                    if isinstance(given, int) and not isinstance(given, bool):
                        return max(1, given)
        return 1


class GraphqlPlugin(Plugin):
    name = "graphql"
    priority = 590  # after auth and limits: an unauthenticated query is never parsed
    Config = GraphqlConfig
    config: GraphqlConfig

    def __init__(self, config: GraphqlConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._allowed = load_allowed(config.persisted_queries) if config.persisted_queries else None
        self.body_limit = config.body_limit

    def on_body(self, ctx: RequestContext, body: bytes) -> Reply | None:
        try:
            return self._judge(ctx, body)
        except RecursionError:  # JSON or a query nested deeper than Python's stack
            raise _refused("query_too_deep", "The request is nested too deeply.") from None

    def _judge(self, ctx: RequestContext, body: bytes) -> Reply | None:
        query, operation, variables, digest = self._request(ctx, body)
        if self._allowed is not None:
            if query is not None:
                digest = hashlib.sha256(query.encode()).hexdigest()
            if digest is None or digest.lower() not in self._allowed:
                raise QueryNotAllowed()
        if query is None:
            if digest is not None:
                return None  # a persisted query by digest: the upstream resolves it
            raise _refused("invalid_graphql", "The request carries no GraphQL query.")
        try:
            document = parse(query, no_location=True, max_tokens=50_000)
        except GraphQLError as error:
            raise _refused("invalid_graphql", f"The query is not valid GraphQL: {error.message}") from None
        self._measure(document, operation, variables)
        return None

    def _request(self, ctx: RequestContext, body: bytes) -> tuple[str | None, str | None, dict[str, Any],
                                                                   str | None]:
        """(query, operation name, variables, persisted-query digest) as the client sent them."""
        fields: dict[str, Any]
        if not body:
            params = dict(parse_qsl(ctx.query.decode("latin-1")))
            fields = {"query": params.get("query"), "operationName": params.get("operationName")}
            for name in ("variables", "extensions"):
                if name in params:
                    try:
                        fields[name] = json.loads(params[name])
                    except ValueError:
                        raise _refused("invalid_graphql", f"The {name} parameter is not JSON.") from None
        else:
            if media_type(ctx.header(b"content-type")) == b"application/graphql":
                fields = {"query": body.decode("utf-8", "replace")}
            else:
                try:
                    fields = json.loads(body)
                except ValueError:
                    raise _refused("invalid_graphql", "The body is not JSON.") from None
                if not isinstance(fields, dict):
                    raise _refused("invalid_graphql", "The body is not one GraphQL request object.")
        query, operation = fields.get("query"), fields.get("operationName")
        variables, extensions = fields.get("variables") or {}, fields.get("extensions") or {}
        if not (query is None or isinstance(query, str)) or not (operation is None or isinstance(operation, str)) \
                or not isinstance(variables, dict) or not isinstance(extensions, dict):
            raise _refused("invalid_graphql", "The GraphQL request's fields have the wrong types.")
        persisted = extensions.get("persistedQuery")
        digest = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        return query, operation, variables, digest if isinstance(digest, str) else None

    def _measure(self, document: DocumentNode, operation: str | None, variables: dict[str, Any]) -> None:
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if operation is not None:
            operations = [d for d in operations if d.name is not None and d.name.value == operation]
            if not operations:
                raise _refused("invalid_graphql", f"The query has no operation {operation!r}.")
        measure = _Measure(fragments, variables)
        config = self.config
        for definition in operations:
            depth, cost = measure.selection(definition.selection_set, 1, frozenset())
            if config.max_depth is not None and depth > config.max_depth:
                raise _refused("query_too_deep", f"The query is {depth} levels deep; at most {config.max_depth}.")
            if config.max_cost is not None and cost > config.max_cost:
                raise _refused("query_too_costly", f"The query costs {cost}; at most {config.max_cost}.")
        if measure.introspection and not config.introspection:
            raise _refused("introspection_disabled", "Introspection (__schema, __type) is disabled here.")
