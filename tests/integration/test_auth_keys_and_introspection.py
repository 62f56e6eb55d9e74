"""api_key, oauth2_introspection (against a real RFC 7662 endpoint), auth_any, allow and ip_restriction in the
real gateway: what clients see, what upstreams get, and that refused requests never reach the upstream."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from frontgate.auth.consumers import hash_key
from tests.idp import IntrospectionServer
from tests.integration.auth_support import assert_refused, get
from tests.integration.helpers import RecordingUpstream, RunningGateway, free_port, gateway_config, run_gateway

ACME_KEY = "acme-key-0f3a9c"
BETA_KEY = "beta-key-77d1e2"
KEY_CHALLENGE = 'ApiKey header="X-Api-Key"'


def introspection_settings(idp: IntrospectionServer, **extra: Any) -> dict[str, Any]:
    settings = {"url": idp.url, "client_id": idp.client_id, "client_secret": idp.client_secret, "cache": "2s",
                "consumer_claim": "client_id", "forward_claims": {"sub": "X-User-Id"}}
    settings.update(extra)
    return settings


@pytest.fixture(scope="module")
def idp() -> Iterator[IntrospectionServer]:
    server = IntrospectionServer()
    now = int(time.time())
    server.tokens = {
        "tok-acme": {"active": True, "client_id": "acme", "sub": "u-1", "scope": "payments:write", "exp": now + 3600},
        "tok-beta": {"active": True, "client_id": "beta", "sub": "u-2", "scope": "other", "exp": now + 3600},
        "tok-nobody": {"active": True, "client_id": "stranger", "exp": now + 3600},
        "tok-revoked": {"active": False},
        "tok-string-active": {"active": "true", "client_id": "acme"},
    }
    yield server
    server.close()


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, shared_upstream: RecordingUpstream,
            idp: IntrospectionServer) -> Iterator[RunningGateway]:
    routes = [
        {"name": "keys", "match": {"paths": ["/keys"]}, "to": "app",
         "plugins": {"api_key": {"header": "X-Api-Key", "query_param": "api_key", "hide": True}}},
        {"name": "shown", "match": {"paths": ["/shown"]}, "to": "app", "plugins": {"api_key": {}}},
        {"name": "partners-only", "match": {"paths": ["/partners-only"]}, "to": "app",
         "plugins": {"api_key": {}, "allow": {"groups": ["partners"]}}},
        {"name": "introspected", "match": {"paths": ["/introspected"]}, "to": "app",
         "plugins": {"oauth2_introspection": introspection_settings(idp),
                     "allow": {"scopes": ["payments:write"]}}},
        {"name": "either", "match": {"paths": ["/either"]}, "to": "app",
         "plugins": {"oauth2_introspection": introspection_settings(idp), "api_key": {"hide": True}},
         "auth_any": ["oauth2_introspection", "api_key"]},
        {"name": "both", "match": {"paths": ["/both"]}, "to": "app",
         "plugins": {"oauth2_introspection": introspection_settings(idp), "api_key": {}}},
        {"name": "internal", "match": {"paths": ["/internal"]}, "to": "app",
         "plugins": {"ip_restriction": {"allow": ["10.0.0.0/8"]}, "api_key": {}}},
        {"name": "local", "match": {"paths": ["/local"]}, "to": "app",
         "plugins": {"ip_restriction": {"allow": ["127.0.0.0/8"], "deny": ["10.6.6.6"]},
                     "allow": {"ips": ["127.0.0.1"]}}},
    ]
    consumers = [
        {"name": "acme", "groups": ["partners"], "api_keys": [hash_key(ACME_KEY)]},
        {"name": "beta", "groups": ["trial"], "api_keys": [hash_key(BETA_KEY)]},
    ]
    config = gateway_config(free_port(), free_port(), {"app": [shared_upstream.url]}, routes, consumers=consumers)
    with run_gateway(tmp_path_factory.mktemp("keys"), config) as running:
        yield running


# --- api_key --------------------------------------------------------------------------------------------


def test_a_known_key_names_its_consumer_and_hide_strips_it(gateway: RunningGateway,
                                                           shared_upstream: RecordingUpstream) -> None:
    assert get(gateway, "/keys", x_api_key=ACME_KEY, x_consumer="beta").status_code == 200
    seen = shared_upstream.requests[-1]
    assert seen.header_values("x-consumer") == ["acme"]
    assert seen.header("x-api-key") is None
    assert httpx.get(gateway.url(f"/keys/x?a=1&api_key={BETA_KEY}&b=2"), timeout=10).status_code == 200
    assert shared_upstream.requests[-1].target == "/keys/x?a=1&b=2"
    assert shared_upstream.requests[-1].header("x-consumer") == "beta"


def test_without_hide_the_key_is_forwarded(gateway: RunningGateway, shared_upstream: RecordingUpstream) -> None:
    assert get(gateway, "/shown", x_api_key=ACME_KEY).status_code == 200
    assert shared_upstream.requests[-1].header("x-api-key") == ACME_KEY


def test_missing_and_unknown_keys_get_401(gateway: RunningGateway, shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    assert_refused(get(gateway, "/keys"), shared_upstream, before, challenge=KEY_CHALLENGE)
    response = get(gateway, "/keys", x_api_key=ACME_KEY + "x")
    assert_refused(response, shared_upstream, before, challenge=KEY_CHALLENGE + ', error="invalid_key"',
                   secret=ACME_KEY)
    assert_refused(get(gateway, "/keys", x_api_key=hash_key(ACME_KEY)), shared_upstream, before, challenge=None)


def test_two_different_keys_in_one_request_are_refused(gateway: RunningGateway,
                                                        shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    both_headers = httpx.get(gateway.url("/keys"), headers=[("x-api-key", ACME_KEY), ("x-api-key", BETA_KEY)],
                             timeout=10)
    assert_refused(both_headers, shared_upstream, before, challenge=None)
    header_and_query = httpx.get(gateway.url(f"/keys?api_key={BETA_KEY}"), headers={"x-api-key": ACME_KEY},
                                 timeout=10)
    assert_refused(header_and_query, shared_upstream, before, challenge=None)
    same_twice = httpx.get(gateway.url(f"/keys?api_key={ACME_KEY}"), headers={"x-api-key": ACME_KEY}, timeout=10)
    assert same_twice.status_code == 200


def test_a_good_key_without_the_group_gets_403(gateway: RunningGateway, shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    assert_refused(get(gateway, "/partners-only", x_api_key=BETA_KEY), shared_upstream, before, 403, None)
    assert get(gateway, "/partners-only", x_api_key=ACME_KEY).status_code == 200


# --- oauth2_introspection -------------------------------------------------------------------------------


def test_an_active_token_is_forwarded_with_identity_and_cached(
    gateway: RunningGateway, shared_upstream: RecordingUpstream, idp: IntrospectionServer
) -> None:
    calls = len(idp.calls)
    for _ in range(3):
        assert get(gateway, "/introspected", "tok-acme", x_user_id="forged").status_code == 200
    seen = shared_upstream.requests[-1]
    assert seen.header_values("x-user-id") == ["u-1"] and seen.header("x-consumer") == "acme"
    assert seen.header("authorization") is None
    assert len(idp.calls) == calls + 1
    assert idp.calls[-1].form == {"token": "tok-acme", "token_type_hint": "access_token"}


@pytest.mark.parametrize("token", ["tok-revoked", "tok-unknown", "tok-string-active", "tok-nobody"])
def test_inactive_unknown_and_unmapped_tokens_get_401(gateway: RunningGateway, shared_upstream: RecordingUpstream,
                                                     token: str) -> None:
    before = len(shared_upstream.requests)
    assert_refused(get(gateway, "/introspected", token), shared_upstream, before)


def test_an_active_token_without_the_scope_gets_403(gateway: RunningGateway,
                                                    shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    assert_refused(get(gateway, "/introspected", "tok-beta"), shared_upstream, before, 403,
                   'Bearer error="insufficient_scope", scope="payments:write"')


def test_introspection_down_gives_503_and_nothing_reaches_the_upstream(
    gateway: RunningGateway, shared_upstream: RecordingUpstream, idp: IntrospectionServer
) -> None:
    before = len(shared_upstream.requests)
    idp.down = True
    try:
        assert_refused(get(gateway, "/introspected", "tok-fresh-while-down"), shared_upstream, before, 503, None)
    finally:
        idp.down = False


# --- several authenticators -----------------------------------------------------------------------------


def test_auth_any_accepts_either_credential(gateway: RunningGateway, shared_upstream: RecordingUpstream) -> None:
    assert get(gateway, "/either", "tok-acme").status_code == 200
    assert shared_upstream.requests[-1].header("x-consumer") == "acme"
    assert get(gateway, "/either", x_api_key=BETA_KEY).status_code == 200
    assert shared_upstream.requests[-1].header("x-consumer") == "beta"
    assert shared_upstream.requests[-1].header("x-api-key") is None
    # A bad token does not stop a good key from winning, and the bad token is not forwarded.
    assert get(gateway, "/either", "tok-revoked", x_api_key=BETA_KEY).status_code == 200
    assert shared_upstream.requests[-1].header("authorization") is None


def test_auth_any_with_no_good_credential_gets_every_challenge(gateway: RunningGateway,
                                                              shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    response = get(gateway, "/either")
    assert_refused(response, shared_upstream, before, challenge="Bearer")
    assert response.headers.get_list("www-authenticate") == ["Bearer", KEY_CHALLENGE]
    assert_refused(get(gateway, "/either", "tok-revoked", x_api_key="nope"), shared_upstream, before)


def test_without_auth_any_every_authenticator_must_pass(gateway: RunningGateway,
                                                        shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    assert_refused(get(gateway, "/both", "tok-acme"), shared_upstream, before, challenge=KEY_CHALLENGE)
    assert_refused(get(gateway, "/both", x_api_key=ACME_KEY), shared_upstream, before, challenge="Bearer")
    # Two good credentials naming different consumers are refused.
    assert_refused(get(gateway, "/both", "tok-acme", x_api_key=BETA_KEY), shared_upstream, before, challenge=None)
    assert get(gateway, "/both", "tok-acme", x_api_key=ACME_KEY).status_code == 200


# --- addresses ------------------------------------------------------------------------------------------


def test_ip_restriction_refuses_before_any_credential_is_checked(gateway: RunningGateway,
                                                                 shared_upstream: RecordingUpstream) -> None:
    before = len(shared_upstream.requests)
    response = get(gateway, "/internal", x_api_key=ACME_KEY)
    assert_refused(response, shared_upstream, before, 403, None)
    assert "address" in response.json()["message"]
    assert get(gateway, "/local").status_code == 200


def test_every_refusal_reason_is_logged(gateway: RunningGateway) -> None:
    get(gateway, "/keys", x_api_key="wrong")
    get(gateway, "/internal")
    deadline = time.monotonic() + 5
    reasons: set[Any] = set()
    while time.monotonic() < deadline:
        reasons = {line.get("auth_failure") for line in gateway.access_log()}
        if {"api_key:unknown_key", "ip_restriction:ip_denied"} <= reasons:
            break
        time.sleep(0.1)
    assert {"api_key:unknown_key", "ip_restriction:ip_denied"} <= reasons


def test_a_reload_keeps_auth_working(tmp_path: Path, upstream: RecordingUpstream) -> None:
    routes = [{"name": "keys", "match": {"paths": ["/"]}, "to": "app", "plugins": {"api_key": {}}}]
    consumers = [{"name": "acme", "api_keys": [hash_key(ACME_KEY)]}]
    config = gateway_config(free_port(), free_port(), {"app": [upstream.url]}, routes, consumers=consumers)
    with run_gateway(tmp_path, config) as gateway:
        assert get(gateway, "/", x_api_key=ACME_KEY).status_code == 200
        consumers.append({"name": "beta", "api_keys": [hash_key(BETA_KEY)]})
        gateway.config_path.write_text(json.dumps(config))
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and get(gateway, "/", x_api_key=BETA_KEY).status_code != 200:
            time.sleep(0.1)
        assert get(gateway, "/", x_api_key=BETA_KEY).status_code == 200
        assert get(gateway, "/", x_api_key=ACME_KEY).status_code == 200
