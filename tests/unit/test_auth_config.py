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


# --- the cached-token path: answered at once, with the same outcome as the general path --------------------


def jwt_runtime(tmp_path: Path, settings: str = "", before: str = "", more_routes: str = "") -> Runtime:
    pem = RSA.public_pem().replace("\n", "\\n")
    return runtime(tmp_path, f"""
        routes:
          - name: r
            match: {{paths: [/]}}
            to: app
            plugins:
              {before}
              jwt: {{keys: ["{pem}"], issuer: "https://idp.test/", audiences: [api.test], consumer_claim: azp,
                     forward_claims: {{sub: X-User-Id, tenant: X-Tenant}} {settings}}}
          {more_routes}
        """)


def run_lines(rt: Runtime, lines: list[tuple[str, str]]) -> tuple[int, RequestContext, bool]:
    """Run the route's hooks on a request whose headers are ready-made lines, as a connection hands them
    over: (status, ctx, whether every hook answered at once)."""
    ctx = RequestContext("GET", "/x", b"", None, "gw.test", "203.0.113.9", "203.0.113.9", "http", "1.1",
                         [f"{k.lower()}: {v}\r\n".encode() for k, v in lines])
    route = rt.router.match("GET", "gw.test", "/x", ())
    ctx.route = route
    at_once = True

    async def go() -> int:
        nonlocal at_once
        for hook in route.request_hooks:
            result = hook(ctx)
            at_once = at_once and result is None
            if await settled(result) is not None:
                return -1
        return 0

    try:
        return asyncio.run(go()), ctx, at_once
    except HttpError as error:
        return error.status, ctx, at_once


def names(ctx: RequestContext) -> list[bytes]:
    return [line.partition(b":")[0] for line in ctx.header_lines()]


def test_a_cached_token_is_settled_at_once_with_the_same_outcome(tmp_path: Path) -> None:
    from tests.idp import claims

    rt = jwt_runtime(tmp_path)
    hooks = rt.routes[0].request_hooks
    assert [h.__qualname__ for h in hooks] == ["JwtPlugin.on_request"]  # it strips the client's copies itself
    token = RSA.token(claims(azp="mobile", tenant="t1"))
    request = [("User-Agent", "t"), ("X-User-Id", "forged"), ("Authorization", f"Bearer {token}"),
               ("X-Consumer", "acme"), ("Accept", "*/*")]
    first = run_lines(rt, request)
    assert first[0] == 0 and not first[2]  # verified: the signature check ran in a coroutine
    again = run_lines(rt, request)
    assert again[0] == 0 and again[2]  # cached: no coroutine at all
    for _, ctx, _ in (first, again):
        assert ctx.header_lines() == [b"user-agent: t\r\n", b"accept: */*\r\n", b"x-consumer: mobile\r\n",
                                      b"x-user-id: user-7\r\n", b"x-tenant: t1\r\n"]
        assert ctx.consumer == "mobile" and ctx.claims is not None and ctx.claims["tenant"] == "t1"
    # The same token spelt otherwise, or sent twice, takes the general path to the same outcome.
    for spelling in ([("Authorization", f"bearer  {token}")], [("Authorization", f"Bearer {token}")] * 2):
        status, ctx, _ = run_lines(rt, [("X-User-Id", "forged"), *spelling])
        assert status == 0 and names(ctx) == [b"x-consumer", b"x-user-id", b"x-tenant"]


def test_a_refused_request_loses_the_client_copies_too(tmp_path: Path) -> None:
    from tests.idp import claims

    rt = jwt_runtime(tmp_path)
    other = RSA.token(claims(azp="mobile", jti="other"))
    for auth in ([], [("Authorization", "Bearer not.a.token")], [("Authorization", f"Bearer {other}")] * 2 + [
            ("Authorization", f"Bearer {RSA.token(claims(azp='mobile'))}")]):
        status, ctx, _ = run_lines(rt, [("X-User-Id", "forged"), ("X-Tenant", "t"), ("X-Keep", "1"), *auth])
        assert status == 401
        assert b"x-user-id" not in names(ctx) and b"x-tenant" not in names(ctx) and b"x-keep" in names(ctx)


def test_a_cached_token_still_expires_on_time(tmp_path: Path) -> None:
    from tests.idp import claims

    rt = jwt_runtime(tmp_path)
    token = RSA.token(claims(azp="mobile", lifetime=100))
    request = [("Authorization", f"Bearer {token}")]
    assert run_lines(rt, request)[0] == 0
    assert run_lines(rt, request)[2]
    verifier = rt.routes[0].plugins[0].verifier  # type: ignore[attr-defined]
    exp = verifier.cached(b"authorization: Bearer " + token.encode() + b"\r\n").expires
    verifier.clock = lambda: exp + 61  # past exp and the 60 s skew
    status, ctx, at_once = run_lines(rt, request)
    assert status == 401 and not at_once
    assert ctx.state is not None and ctx.state["auth_failure"] == "jwt:expired"


def test_a_forwarded_token_stays_in_its_place_on_the_cached_path(tmp_path: Path) -> None:
    from tests.idp import claims

    rt = jwt_runtime(tmp_path, ", forward_token: true")
    token = RSA.token(claims(azp="mobile"))
    request = [("Authorization", f"Bearer {token}"), ("X-Tenant", "forged"), ("Accept", "*/*")]
    for _ in range(2):
        status, ctx, _ = run_lines(rt, request)
        assert status == 0
        assert names(ctx) == [b"authorization", b"accept", b"x-consumer", b"x-user-id"]


def test_after_another_hook_the_client_copies_go_in_a_hook_of_their_own(tmp_path: Path) -> None:
    from tests.idp import claims

    rt = jwt_runtime(tmp_path, before="ip_restriction: {allow: [203.0.113.0/24]}")
    hooks = [h.__qualname__ for h in rt.routes[0].request_hooks]
    assert hooks[0].endswith("strip_gateway_headers") and hooks[2] == "JwtPlugin.on_request"
    request = [("X-User-Id", "forged"), ("Authorization", f"Bearer {RSA.token(claims(azp='mobile'))}")]
    for _ in range(2):
        status, ctx, _ = run_lines(rt, request)
        assert status == 0 and names(ctx) == [b"x-consumer", b"x-user-id"]


def test_an_authenticator_reading_a_gateway_header_leaves_the_stripping_to_its_own_hook(tmp_path: Path) -> None:
    from tests.idp import claims

    # Absurd, but it must not change meaning: the client's X-Token is a gateway header, gone before jwt looks.
    rt = jwt_runtime(tmp_path, ", header: X-Token", more_routes="""
          - name: t
            match: {paths: [/t]}
            to: app
            plugins: {oauth2_introspection: {url: "http://127.0.0.1:9/i", client_id: a, client_secret: b,
                                             forward_claims: {sub: X-Token}}}""")
    assert rt.routes[0].request_hooks[0].__qualname__.endswith("strip_gateway_headers")
    status, ctx, _ = run_lines(rt, [("X-Token", f"Bearer {RSA.token(claims(azp='mobile'))}")])
    assert status == 401 and ctx.state is not None and ctx.state["auth_failure"] == "jwt:missing"


def test_api_keys_and_cached_tokens_in_auth_any_are_settled_at_once(tmp_path: Path) -> None:
    from tests.idp import claims

    pem = RSA.public_pem().replace("\n", "\\n")
    rt = runtime(tmp_path, f"""
        routes:
          - name: r
            match: {{paths: [/]}}
            to: app
            plugins:
              jwt: {{keys: ["{pem}"], issuer: "https://idp.test/", audiences: [api.test], consumer_claim: azp}}
              api_key: {{hide: true}}
            auth_any: [api_key, jwt]
        """)
    status, ctx, at_once = run_lines(rt, [("X-Api-Key", KEY)])
    assert (status, ctx.consumer, at_once) == (0, "acme", True)
    request = [("Authorization", f"Bearer {RSA.token(claims(azp='mobile'))}")]
    assert run_lines(rt, request)[2] is False
    status, ctx, at_once = run_lines(rt, request)
    assert (status, ctx.consumer, at_once) == (0, "mobile", True)
    assert run_lines(rt, [("X-Api-Key", "wrong")])[0] == 401
