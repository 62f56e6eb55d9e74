"""Auth configuration as a user writes it: what `frontgate validate` says about mistakes, and how the
compiled route chain looks (header stripping first, `auth_any` folded into one hook). No sockets: the
chain is run on a hand-made request context."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from frontgate.auth.consumers import hash_key
from frontgate.config.compile import Runtime, compile_runtime
from frontgate.config.loader import load_config
from frontgate.errors import ConfigError, HttpError
from frontgate.pipeline.context import RequestContext, settled
from frontgate.plugins import plugin_models
from frontgate.upstream.cluster import UpstreamRegistry
from tests.idp import Signer

KEY = "partner-key-123"
RSA = Signer.rsa("k1")
HEAD = f"""
version: 1
upstreams: {{app: {{targets: ["http://127.0.0.1:9"]}}}}
consumers:
  - {{name: acme, groups: [partners], api_keys: ["{hash_key(KEY)}"]}}
  - {{name: mobile, groups: [first-party]}}
"""


def write(tmp_path: Path, body: str) -> str:
    path = tmp_path / "frontgate.yaml"
    path.write_text(HEAD + textwrap.dedent(body))
    return str(path)


def problems(tmp_path: Path, body: str) -> list[str]:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_config([path], plugin_models=plugin_models())
    return [str(p).removeprefix(path + ":") for p in caught.value.problems]


def runtime(tmp_path: Path, body: str) -> Runtime:
    loaded = load_config([write(tmp_path, body)], plugin_models=plugin_models())
    return compile_runtime(loaded, UpstreamRegistry(), 1)


def run(rt: Runtime, path: str, headers: dict[str, str]) -> tuple[int, RequestContext]:
    ctx = RequestContext("GET", path, b"", [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                         "gw.test", "203.0.113.9", "203.0.113.9", "http", "1.1")
    route = rt.router.match("GET", "gw.test", path, ctx.headers)
    ctx.route = route

    async def go() -> int:
        for hook in route.request_hooks:
            if await settled(hook(ctx)) is not None:
                return -1
        return 0

    try:
        return asyncio.run(go()), ctx
    except HttpError as error:
        return error.status, ctx


def whole_file_problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "frontgate.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config([str(path)], plugin_models=plugin_models())
    return [str(p).removeprefix(f"{path}:") for p in caught.value.problems]


def test_a_raw_api_key_in_consumers_is_refused_with_its_line(tmp_path: Path) -> None:
    found = whole_file_problems(tmp_path, """
        version: 1
        consumers:
          - {name: oops, api_keys: [my-plain-key]}
        """)
    assert len(found) == 1 and found[0].startswith("4:"), found
    assert "consumers[0].api_keys[0]" in found[0] and "hash-key" in found[0]
    assert "my-plain-key" not in found[0]


@pytest.mark.parametrize(
    ("route_extra", "message"),
    [
        ("auth_any: [jwt, api_key]", "auth_any[0]: 'jwt' is not configured on this route"),
        ("auth_any: [api_key, rewrite]", "auth_any[1]: 'rewrite' is not an auth plugin"),
        ("auth_any: [api_key, api_key]", "auth_any[1]: 'api_key' is listed twice"),
    ],
)
def test_auth_any_must_name_auth_plugins_on_the_route(tmp_path: Path, route_extra: str, message: str) -> None:
    found = problems(tmp_path, f"""
        routes:
          - name: r
            match: {{paths: [/]}}
            to: app
            plugins: {{api_key: {{}}}}
            {route_extra}
        """)
    assert any(message in p for p in found), found


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("{keys: [s], algorithms: [none]}", "'none' is never allowed"),
        ("{keys: [s], algorithms: [RS256, NONE]}", "'none' is never allowed"),
        ("{keys: [short-secret], algorithms: [HS256]}", "at least 32 bytes"),
        ("{jwks_url: 'http://127.0.0.1:9/jwks', algorithms: [HS256]}", "need a secret"),
        ("{algorithms: [RS256]}", "jwt needs keys"),
        ("{jwks_url: 'file:///etc/passwd'}", "expected an http(s) URL"),
        ("{jwks_file: /nonexistent/jwks.json}", "cannot read jwks_file"),
        ("{jwks_url: 'http://127.0.0.1:9/jwks', forward_claims: {sub: 'X User'}}", "invalid header name"),
        ("{jwks_url: 'http://127.0.0.1:9/jwks', algorithms: [XS256]}", "unknown algorithm"),
    ],
)
def test_jwt_settings_are_checked_at_load(tmp_path: Path, settings: str, message: str) -> None:
    settings = settings.replace("keys: [s]", "keys: ['" + "s" * 40 + "']")
    found = problems(tmp_path, f"""
        routes:
          - {{name: r, match: {{paths: [/]}}, to: app, plugins: {{jwt: {settings}}}}}
        """)
    assert any(message in p for p in found), found


def test_duplicate_consumers_and_shared_key_hashes_are_refused(tmp_path: Path) -> None:
    digest = hash_key("k")
    found = whole_file_problems(tmp_path, f"""
        version: 1
        consumers:
          - {{name: a, api_keys: ['{digest}']}}
          - {{name: b, api_keys: ['{digest}']}}
          - {{name: a}}
        """)
    assert any(p.startswith("6:") and "consumers[2].name: duplicate consumer name 'a'" in p for p in found), found
    assert any("consumers[1].api_keys[0]: this key hash is already consumer 'a''s" in p for p in found), found


def test_inline_pem_key_jwt_route_compiles_and_verifies(tmp_path: Path) -> None:
    pem = RSA.public_pem().replace("\n", "\\n")
    rt = runtime(tmp_path, f"""
        routes:
          - name: r
            match: {{paths: [/]}}
            to: app
            plugins:
              jwt: {{keys: ["{pem}"], issuer: "https://idp.test/", audiences: [api.test],
                     forward_claims: {{sub: X-User-Id}}}}
        """)
    from tests.idp import claims

    status, ctx = run(rt, "/x", {"authorization": "Bearer " + RSA.token(claims()), "x-user-id": "forged"})
    assert status == 0
    assert ctx.header(b"x-user-id") == b"user-7"
    assert ctx.header(b"authorization") is None
    assert ctx.claims is not None and ctx.claims["sub"] == "user-7"


def test_client_copies_of_gateway_headers_are_stripped_on_routes_without_auth(tmp_path: Path) -> None:
    rt = runtime(tmp_path, """
        routes:
          - name: secure
            match: {paths: [/secure]}
            to: app
            plugins: {jwt: {jwks_url: "http://127.0.0.1:9/jwks", forward_claims: {sub: X-User-Id, tenant: X-Tenant}}}
          - {name: open, match: {paths: [/open]}, to: app}
        """)
    status, ctx = run(rt, "/open", {"x-user-id": "admin", "X-Tenant": "other", "x-consumer": "acme", "x-keep": "1"})
    assert status == 0
    assert [k for k, _ in ctx.headers] == [b"x-keep"]


def test_auth_any_is_one_hook_tried_in_the_given_order(tmp_path: Path) -> None:
    rt = runtime(tmp_path, """
        routes:
          - name: r
            match: {paths: [/]}
            to: app
            plugins:
              jwt: {jwks_url: "http://127.0.0.1:9/jwks"}
              api_key: {hide: true}
              allow: {groups: [partners]}
            auth_any: [api_key, jwt]
        """)
    route = rt.routes[0]
    names = [getattr(h, "__qualname__", "") for h in route.request_hooks]
    assert names[0].endswith("strip_gateway_headers")
    assert names[1] == "auth_any(api_key,jwt)"
    assert "AllowPlugin.on_request" in names[2]
    status, ctx = run(rt, "/", {"x-api-key": KEY})
    assert status == 0 and ctx.consumer == "acme"
    assert ctx.header(b"x-api-key") is None and ctx.header(b"x-consumer") == b"acme"
    assert run(rt, "/", {"x-api-key": "wrong"})[0] == 401


def test_every_auth_plugin_must_pass_without_auth_any(tmp_path: Path) -> None:
    rt = runtime(tmp_path, """
        routes:
          - name: r
            match: {paths: [/]}
            to: app
            plugins:
              jwt: {jwks_url: "http://127.0.0.1:9/jwks"}
              api_key: {}
        """)
    # A good key alone is not enough: the jwt plugin finds no token (and never needs its JWKS for that).
    status, ctx = run(rt, "/", {"x-api-key": KEY})
    assert status == 401
    assert ctx.state is not None and ctx.state["auth_failure"] == "jwt:missing"


def test_the_hash_key_command_makes_the_hash_api_key_accepts(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "frontgate", "hash-key"], input=KEY + "\n", capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == hash_key(KEY)


def test_every_refusal_is_counted_by_plugin_and_reason(tmp_path: Path) -> None:
    from frontgate.auth.metrics import failure_counts

    rt = runtime(tmp_path, """
        routes:
          - {name: r, match: {paths: [/]}, to: app, plugins: {api_key: {}, allow: {groups: [partners]}}}
        """)
    before = failure_counts()
    assert run(rt, "/", {"x-api-key": "nope"})[0] == 401
    assert run(rt, "/", {})[0] == 401
    after = failure_counts()
    assert after.get(("api_key", "unknown_key"), 0) == before.get(("api_key", "unknown_key"), 0) + 1
    assert after.get(("api_key", "missing"), 0) == before.get(("api_key", "missing"), 0) + 1


def test_allow_names_only_declared_consumers(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        routes:
          - {name: r, match: {paths: [/]}, to: app, plugins: {api_key: {}, allow: {consumers: [acme, acmee]}}}
        """)
    assert any("routes[0].plugins.allow.consumers[1]: unknown consumer 'acmee'" in p for p in found), found
