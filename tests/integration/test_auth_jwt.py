"""The jwt plugin in the real gateway, against a real JWKS server: what clients see, what upstreams get, and
that no forged, stale or malformed token ever reaches an upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.idp import ConnectionCounter, JwksServer, Signer, b64, b64json, claims
from tests.integration.auth_support import assert_refused, get
from tests.integration.helpers import (
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    raw_exchange,
    run_gateway,
    status_of,
)

ISS = "https://idp.test/"
RSA = Signer.rsa("rsa-1")
EC = Signer.ec("ec-1")
ED = Signer.ed25519("ed-1")
HMAC_SECRET = "an-hmac-secret-of-at-least-32-bytes!"


def jwt_settings(jwks: JwksServer, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "issuer": ISS,
        "audiences": ["api.test"],
        "jwks_url": jwks.url,
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "consumer_claim": "azp",
        "forward_claims": {"sub": "X-User-Id", "tenant": "X-Tenant"},
        "jwks_cooldown": "1s",
    }
    settings.update(extra)
    return settings


def config_for(upstream: RecordingUpstream, jwks: JwksServer, **jwt_extra: Any) -> dict[str, Any]:
    settings = jwt_settings(jwks, **jwt_extra)
    routes = [
        {"name": "api", "match": {"paths": ["/api"]}, "to": "app", "plugins": {"jwt": settings}},
        {"name": "admin", "match": {"paths": ["/admin"]}, "to": "app",
         "plugins": {"jwt": settings, "allow": {"scopes": ["admin"], "groups": ["first-party"]}}},
        {"name": "keep", "match": {"paths": ["/keep"]}, "to": "app",
         "plugins": {"jwt": {**settings, "forward_token": True, "query_param": "access_token",
                             "cookie": "session"}}},
        {"name": "hs", "match": {"paths": ["/hs"]}, "to": "app",
         "plugins": {"jwt": {"keys": [HMAC_SECRET], "algorithms": ["HS256"], "issuer": ISS}}},
        {"name": "open", "match": {"paths": ["/open"]}, "to": "app"},
    ]
    return gateway_config(free_port(), free_port(), {"app": [upstream.url]}, routes,
                          consumers=[{"name": "mobile-app", "groups": ["first-party"]}, {"name": "partner"}])


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    server = JwksServer([RSA, EC, ED])
    yield server
    server.close()


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, shared_upstream: RecordingUpstream,
            jwks: JwksServer) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("jwt"), config_for(shared_upstream, jwks)) as running:
        yield running


def good(signer: Signer = RSA, **extra: Any) -> str:
    return signer.token(claims(azp="mobile-app", tenant="acme", **extra))


# --- accepted -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signer", [RSA, EC, ED], ids=["RS256", "ES256", "EdDSA"])
def test_a_good_token_reaches_the_upstream_with_identity_headers_and_without_the_token(
    gateway: RunningGateway, shared_upstream: RecordingUpstream, signer: Signer
) -> None:
    response = get(gateway, "/api/orders", good(signer), x_user_id="admin", x_consumer="root", x_tenant="evil")
    assert response.status_code == 200, response.text
    seen = shared_upstream.requests[-1]
    assert seen.header_values("x-user-id") == ["user-7"]
    assert seen.header_values("x-tenant") == ["acme"]
    assert seen.header_values("x-consumer") == ["mobile-app"]
    assert seen.header("authorization") is None


def test_forward_token_keeps_it_and_query_and_cookie_tokens_are_accepted(
    gateway: RunningGateway, shared_upstream: RecordingUpstream
) -> None:
    token = good()
    assert get(gateway, "/keep", token).status_code == 200
    assert shared_upstream.requests[-1].header("authorization") == f"Bearer {token}"
    assert httpx.get(gateway.url(f"/keep?access_token={token}&x=1"), timeout=10).status_code == 200
    assert shared_upstream.requests[-1].target == f"/keep?access_token={token}&x=1"
    assert get(gateway, "/keep", cookie=f"a=1; session={token}").status_code == 200


def test_an_hs256_route_with_an_inline_secret(gateway: RunningGateway) -> None:
    token = Signer.hmac(HMAC_SECRET.encode()).token(claims())
    assert get(gateway, "/hs", token).status_code == 200
    assert get(gateway, "/hs", Signer.hmac(b"another-secret-of-at-least-32-bytes").token(claims())).status_code == 401


def test_a_float_exp_in_the_future_is_accepted(gateway: RunningGateway) -> None:
    assert get(gateway, "/api", good(exp=time.time() + 120.5)).status_code == 200


def test_scopes_and_groups_from_allow(gateway: RunningGateway, shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    assert_refused(get(gateway, "/admin", good(scope="orders:read")), shared_upstream, before, 403,
                   'Bearer error="insufficient_scope", scope="admin"')
    assert get(gateway, "/admin", good(scope="orders:read admin")).status_code == 200
    partner = RSA.token(claims(azp="partner", scope="admin"))
    assert_refused(get(gateway, "/admin", partner), shared_upstream, before + 1, 403, None)


def test_client_made_identity_headers_are_removed_on_routes_without_auth(
    gateway: RunningGateway, shared_upstream: RecordingUpstream
) -> None:
    assert get(gateway, "/open", x_user_id="admin", x_tenant="t", x_consumer="c", x_other="kept").status_code == 200
    seen = shared_upstream.requests[-1]
    assert seen.header("x-user-id") is None and seen.header("x-tenant") is None and seen.header("x-consumer") is None
    assert seen.header("x-other") == "kept"


# --- refused --------------------------------------------------------------------------------------------


def test_no_token_gets_a_bare_bearer_challenge(gateway: RunningGateway, shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    response = get(gateway, "/api", x_user_id="admin")
    assert_refused(response, shared_upstream, before, challenge="Bearer")
    assert response.headers["www-authenticate"] == "Bearer"
    assert get(gateway, "/api", authorization="Basic dTpw").status_code == 401


def _forged() -> dict[str, str]:
    head, payload, sig = good().split(".")
    attacker = Signer.rsa("rsa-1")
    none_claims = b64json(claims(azp="mobile-app"))
    return {
        "alg-none": f"{b64json({'alg': 'none'})}.{none_claims}.",
        "alg-None": f"{b64json({'alg': 'None', 'kid': 'rsa-1'})}.{none_claims}.",
        "alg-NONE-with-sig": f"{b64json({'alg': 'NONE'})}.{none_claims}.{sig}",
        "alg-nOnE": f"{b64json({'alg': 'nOnE'})}.{none_claims}.",
        "null-signature": f"{head}.{payload}.",
        "truncated-signature": f"{head}.{payload}.{sig[:40]}",
        "other-claims-same-signature": f"{head}.{b64json(claims(azp='mobile-app', sub='admin'))}.{sig}",
        "hs256-with-rsa-public-pem": Signer.hmac(RSA.public_pem().encode(), kid="rsa-1").token(
            claims(azp="mobile-app")),
        "embedded-jwk": attacker.token(claims(azp="mobile-app"), jwk=attacker.public_jwk()),
        "x5u": attacker.token(claims(azp="mobile-app"), x5u="http://127.0.0.1:9/cert.pem"),
        "kid-path-traversal": RSA.token(claims(azp="mobile-app"), kid="../../../../../../dev/null"),
        "kid-sql": RSA.token(claims(azp="mobile-app"), kid="x' UNION SELECT 'secret"),
        "kid-not-string": RSA.token(claims(azp="mobile-app"), kid={"$ne": None}),
        "expired": good(exp=int(time.time()) - 3600),
        "not-yet-valid": good(nbf=int(time.time()) + 3600),
        "string-exp": good(exp=str(int(time.time()) + 300)),
        "float-exp-past": good(exp=time.time() - 600.5),
        "wrong-issuer": RSA.token(claims(issuer="https://evil.test/", azp="mobile-app")),
        "prefix-issuer": RSA.token(claims(issuer="https://idp.test/evil", azp="mobile-app")),
        "issuer-without-slash": RSA.token(claims(issuer="https://idp.test", azp="mobile-app")),
        "wrong-audience": RSA.token(claims(audience="api.test.evil.com", azp="mobile-app")),
        "unknown-crit": RSA.token(claims(azp="mobile-app"), crit=["exp"]),
        "unknown-consumer": RSA.token(claims(azp="nobody")),
        "two-segments": f"{head}.{payload}",
        "four-segments": f"{head}.{payload}.{sig}.{sig}",
        "garbage-segments": "!!!.???.***",
        "padded-base64": f"{head}==.{payload}.{sig}",
        "header-not-json": f"{b64(b'{alg: RS256')}.{payload}.{sig}",
        "payload-array": RSA.token(b"[1,2,3]"),
    }


FORGED = _forged()


@pytest.mark.parametrize("name", list(FORGED))
def test_forged_expired_and_malformed_tokens_get_401_and_never_reach_the_upstream(
    gateway: RunningGateway, shared_upstream: RecordingUpstream, name: str
) -> None:
    token = FORGED[name]
    before = len(shared_upstream.requests)
    assert_refused(get(gateway, "/api", token), shared_upstream, before, secret=token)


def test_jku_is_never_fetched(gateway: RunningGateway, shared_upstream: RecordingUpstream) -> None:
    listener = ConnectionCounter()
    try:
        attacker = Signer.rsa("attacker")
        url = f"http://127.0.0.1:{listener.port}/jwks"
        before = len(shared_upstream.requests)
        for kid in ("attacker", "rsa-1", None):
            assert_refused(get(gateway, "/api", attacker.token(claims(azp="mobile-app"), jku=url, kid=kid)),
                           shared_upstream, before)
        time.sleep(0.5)
        assert listener.connections == 0
    finally:
        listener.close()


def test_a_60kb_token_is_refused_and_never_reaches_the_upstream(
    gateway: RunningGateway, shared_upstream: RecordingUpstream
) -> None:
    token = good(padding="x" * 60_000)
    before = len(shared_upstream.requests)
    response = raw_exchange(gateway.port, (f"GET /api HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {token}"
                                           "\r\nconnection: close\r\n\r\n").encode())
    assert status_of(response) in (401, 431)
    assert token[:40].encode() not in response
    assert len(shared_upstream.requests) == before


def test_a_10kb_token_within_the_header_limit_is_refused_by_the_token_limit(
    gateway: RunningGateway, shared_upstream: RecordingUpstream
) -> None:
    before = len(shared_upstream.requests)
    assert_refused(get(gateway, "/api", good(padding="x" * 10_000)), shared_upstream, before)


def test_failures_are_in_the_access_log_with_their_reason(gateway: RunningGateway) -> None:
    get(gateway, "/api", good(exp=int(time.time()) - 3600), x_request_id="expired-one")
    get(gateway, "/api")
    deadline = time.monotonic() + 5
    reasons: set[Any] = set()
    while time.monotonic() < deadline:
        reasons = {line.get("auth_failure") for line in gateway.access_log() if line.get("path") == "/api"}
        if {"jwt:expired", "jwt:missing"} <= reasons:
            break
        time.sleep(0.1)
    assert {"jwt:expired", "jwt:missing"} <= reasons


# --- keys that change -----------------------------------------------------------------------------------


def test_rotated_keys_are_learned_on_unknown_kid_and_kept_when_the_issuer_goes_down(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    old, new, bogus = Signer.rsa("old"), Signer.rsa("new"), Signer.rsa("bogus")
    jwks = JwksServer([old])
    try:
        config = config_for(upstream, jwks, jwks_refresh="10m", jwks_cooldown="1s")
        with run_gateway(tmp_path, config) as gateway:
            assert get(gateway, "/api", good(old)).status_code == 200
            jwks.rotate([old, new])
            time.sleep(1.1)  # past the cooldown of the startup fetch
            fetched = jwks.requests
            assert get(gateway, "/api", good(new)).status_code == 200
            assert jwks.requests == fetched + 1
            # A storm of unknown kids costs at most one fetch per cooldown.
            time.sleep(1.1)
            fetched = jwks.requests
            started = time.monotonic()
            for i in range(30):
                assert get(gateway, "/api", good(old, jti=str(i))).status_code == 200
                forged = bogus.token(claims(azp="mobile-app", jti=f"b{i}"), kid=f"bogus-{i}")
                assert get(gateway, "/api", forged).status_code == 401
            elapsed = time.monotonic() - started
            assert 1 <= jwks.requests - fetched <= elapsed / 1.0 + 1
            # The issuer goes down: the refresh fails, the last good keys keep working.
            jwks.down = True
            time.sleep(1.1)
            fetched = jwks.requests
            assert get(gateway, "/api", bogus.token(claims(azp="mobile-app"), kid="bogus-x")).status_code == 401
            assert jwks.requests == fetched + 1
            assert get(gateway, "/api", good(old, jti="during-outage")).status_code == 200
            assert get(gateway, "/api", good(new, jti="during-outage")).status_code == 200
            assert "serving the last good keys" in gateway.logs()
    finally:
        jwks.close()


def test_an_issuer_down_at_startup_gives_503_then_recovers(tmp_path: Path, upstream: RecordingUpstream) -> None:
    jwks = JwksServer([RSA])
    jwks.down = True
    try:
        config = config_for(upstream, jwks, jwks_refresh="1s", jwks_cooldown="1s", jwks_url=jwks.url + "?fresh")
        with run_gateway(tmp_path, config) as gateway:
            response = get(gateway, "/api", good())
            assert_refused(response, upstream, 0, 503, None)
            assert "try again" in json.loads(response.text)["message"]
            jwks.down = False
            deadline = time.monotonic() + 10
            status = 0
            while time.monotonic() < deadline and status != 200:
                time.sleep(0.3)
                status = get(gateway, "/api", good()).status_code
            assert status == 200
    finally:
        jwks.close()
