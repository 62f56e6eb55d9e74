"""`frontgate test`: declarative route and policy tests, run against the compiled config without any upstream.

A test file:

    tests:
      - name: orders from acme go to payments-acme
        request: {method: GET, url: /payments/7, headers: {x-tenant: acme}}
        expect: {route: payments-acme, upstream: payments-acme, path: /payments/7}
      - name: unknown paths are 404
        request: {method: GET, url: /nowhere}
        expect: {status: 404}

Each request is normalised and routed exactly as the gateway does, then the route's request plugins run
(so a plugin that answers itself, e.g. with a 401, is seen as that status). `expect` may name the `route`,
the `upstream`, the upstream `path` (after rewrites), `headers` the upstream would receive, and the
`status` the gateway answers itself (omit it, or write `proxied`, for a request that reaches an upstream).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from frontgate.config.compile import CompiledRoute, Runtime
from frontgate.errors import ConfigError, ConfigProblem, HttpError
from frontgate.pipeline.context import RequestContext, settled
from frontgate.routing.normalize import normalize_path, split_target
from frontgate.server.forwarding import FORWARDING_FIELDS, add_forwarding_headers, client_address


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TestRequest(_Model):
    method: str = "GET"
    url: str = Field(description="A path (`/orders?x=1`) or an absolute URL, whose host is used.")
    headers: dict[str, str] = Field(default_factory=dict)
    client_ip: str = "203.0.113.10"


class TestExpect(_Model):
    route: str | None = None
    upstream: str | None = None
    path: str | None = None
    status: int | Literal["proxied"] | None = None
    headers: dict[str, str | None] = Field(
        default_factory=dict, description="Headers the upstream receives; null means it must not receive it."
    )


class PolicyTest(_Model):
    name: str
    request: TestRequest
    expect: TestExpect


class PolicyTestFile(_Model):
    tests: list[PolicyTest] = Field(min_length=1)


@dataclass
class Outcome:
    name: str
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def load_tests(path: str) -> PolicyTestFile:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, 0, 0, "", f"cannot read: {exc.strerror}")]) from exc
    yaml = YAML(typ="safe")
    yaml.version = (1, 2)
    try:
        data = yaml.load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError([ConfigProblem(path, line, column, "", f"YAML syntax error: {exc}")]) from exc
    try:
        return PolicyTestFile.model_validate(data)
    except ValidationError as exc:
        problems = [
            ConfigProblem(path, 0, 0, ".".join(str(p) for p in error["loc"]), error["msg"]) for error in exc.errors()
        ]
        raise ConfigError(problems) from exc


def run_tests(runtime: Runtime, tests: PolicyTestFile) -> list[Outcome]:
    return [asyncio.run(_run_one(runtime, test)) for test in tests.tests]


async def _run_one(runtime: Runtime, test: PolicyTest) -> Outcome:
    request, expect = test.request, test.expect
    failures: list[str] = []
    parts = urlsplit(request.url if "://" in request.url else f"http://localhost{request.url}")
    host_header = request.headers.get("host") or request.headers.get("Host") or parts.netloc or "localhost"
    host = host_header.split(":")[0].lower()
    raw_path, _ = split_target((parts.path or "/").encode())
    method = request.method.upper()
    headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.items() if k.lower() != "host"]

    status: int | Literal["proxied"]
    route: CompiledRoute | None = None
    ctx: RequestContext | None = None
    try:
        path = normalize_path(raw_path)
        client_fields = [(k, v) for k, v in headers if k in FORWARDING_FIELDS]
        forwarded = [(k, v) for k, v in headers if k not in FORWARDING_FIELDS]
        trusted = runtime.is_trusted(request.client_ip)
        client_ip = client_address(request.client_ip, client_fields, runtime.is_trusted)
        add_forwarding_headers(forwarded, client_fields if trusted else (), request.client_ip, "http",
                               host_header.encode())
        ctx = RequestContext(method, path, parts.query.encode(), forwarded, host, client_ip, request.client_ip,
                             "http", "1.1")
        route = runtime.match_route(ctx)
        ctx.route = route
        status = "proxied"
        for hook in route.request_hooks:
            reply = await settled(hook(ctx))
            if reply is not None:
                status = reply.status
                break
    except HttpError as error:
        status = error.status

    if expect.status is not None and expect.status != status:
        failures.append(f"status: expected {expect.status}, got {status}")
    if expect.route is not None:
        got = route.name if route else None
        if got != expect.route:
            failures.append(f"route: expected {expect.route}, got {got or 'no route'}")
    if status == "proxied" and route is not None and ctx is not None:
        failures += _check_upstream(route, ctx, expect)
    elif expect.upstream or expect.path or expect.headers:
        failures.append(f"expected the request to reach an upstream, but the gateway answers {status}")
    return Outcome(test.name, failures)


def _check_upstream(route: CompiledRoute, ctx: RequestContext, expect: TestExpect) -> list[str]:
    failures = []
    if expect.upstream is not None:
        choices = [name for name, weight in route.split.choices if weight > 0]
        if route.sticky_key is not None:
            key = route.sticky_key(ctx.headers, ctx.client_ip, ctx.claims)
            chosen = [route.split.pick(key)] if key is not None else choices
        else:
            chosen = choices
        if chosen != [expect.upstream]:
            failures.append(
                f"upstream: expected {expect.upstream}, got "
                + (chosen[0] if len(chosen) == 1 else "any of " + ", ".join(chosen) + " (no sticky key)")
            )
    if expect.path is not None:
        target = ctx.upstream_path + (f"?{ctx.query.decode()}" if ctx.query else "")
        if expect.path not in (ctx.upstream_path, target):
            failures.append(f"path: expected {expect.path}, got {target}")
    for name, wanted in expect.headers.items():
        got = ctx.header(name.lower().encode())
        got_text = got.decode("latin-1") if got is not None else None
        if got_text != wanted:
            failures.append(f"header {name}: expected {wanted!r}, got {got_text!r}")
    return failures
