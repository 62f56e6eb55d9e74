"""The RFC 7662 client without sockets: a scripted endpoint and an injected clock."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from frontgate.auth.errors import AuthFailure
from frontgate.auth.introspection import Introspector

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Endpoint:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.forms: list[dict[str, str]] = []
        self.status = 200

    async def post(self, form: dict[str, str]) -> tuple[int, bytes]:
        self.forms.append(form)
        await asyncio.sleep(0)
        answer = self.answers.get(form["token"], {"active": False})
        return self.status, answer if isinstance(answer, bytes) else json.dumps(answer).encode()


def client(endpoint: Endpoint, clock: Clock, **options: Any) -> Introspector:
    return Introspector("https://idp.test/introspect", "gw", "secret", cache_ttl=60, clock=clock,
                        post=endpoint.post, **options)


def refused(intro: Introspector, token: str) -> AuthFailure:
    with pytest.raises(AuthFailure) as caught:
        asyncio.run(intro.introspect(token))
    return caught.value


def test_an_active_token_gives_its_claims_and_is_cached() -> None:
    endpoint = Endpoint({"good": {"active": True, "scope": "a b", "sub": "u1", "exp": NOW + 600}})
    intro = client(endpoint, Clock())
    assert asyncio.run(intro.introspect("good"))["sub"] == "u1"
    assert asyncio.run(intro.introspect("good"))["scope"] == "a b"
    assert len(endpoint.forms) == 1
    assert endpoint.forms[0] == {"token": "good", "token_type_hint": "access_token"}


def test_a_cached_answer_never_outlives_the_token_exp() -> None:
    clock = Clock()
    endpoint = Endpoint({"short": {"active": True, "exp": NOW + 10}})
    intro = client(endpoint, clock, clock_skew=0)
    asyncio.run(intro.introspect("short"))
    clock.now += 11
    endpoint.answers["short"] = {"active": False}
    assert refused(intro, "short").reason == "inactive"
    assert len(endpoint.forms) == 2


def test_refusals_are_cached_for_the_cache_time() -> None:
    clock = Clock()
    endpoint = Endpoint({})
    intro = client(endpoint, clock)
    for _ in range(5):
        assert refused(intro, "bad").reason == "inactive"
    assert len(endpoint.forms) == 1
    clock.now += 61
    refused(intro, "bad")
    assert len(endpoint.forms) == 2


@pytest.mark.parametrize(
    "answer",
    [{"active": "true"}, {"active": 1}, {"sub": "u"}, {"active": True, "exp": NOW - 120},
     {"active": True, "exp": "soon"}, {"active": True, "nbf": NOW + 3600}],
    ids=["string-true", "one", "no-active", "expired", "string-exp", "not-yet-valid"],
)
def test_only_a_json_true_active_with_valid_times_is_accepted(answer: dict[str, Any]) -> None:
    assert refused(client(Endpoint({"t": answer}), Clock()), "t").reason == "inactive"


@pytest.mark.parametrize(("status", "body"), [(500, b"{}"), (401, b'{"error":"invalid_client"}'), (200, b"[]"),
                                              (200, b"<html>")])
def test_a_failing_endpoint_is_unavailable_and_not_cached(status: int, body: bytes) -> None:
    endpoint = Endpoint({"t": body})
    endpoint.status = status
    intro = client(endpoint, Clock())
    failure = refused(intro, "t")
    assert failure.kind == "unavailable"
    refused(intro, "t")
    assert len(endpoint.forms) == 2


def test_concurrent_requests_with_one_token_make_one_call() -> None:
    endpoint = Endpoint({"t": {"active": True}})
    intro = client(endpoint, Clock())

    async def run() -> None:
        results = await asyncio.gather(*(intro.introspect("t") for _ in range(10)))
        assert all(r["active"] is True for r in results)

    asyncio.run(run())
    assert len(endpoint.forms) == 1


def test_client_secret_post_sends_the_credentials_in_the_form() -> None:
    endpoint = Endpoint({"t": {"active": True}})
    asyncio.run(client(endpoint, Clock(), auth_method="post").introspect("t"))
    assert endpoint.forms[0]["client_id"] == "gw" and endpoint.forms[0]["client_secret"] == "secret"


def test_the_cache_is_bounded() -> None:
    endpoint = Endpoint({f"t{i}": {"active": True} for i in range(10)})
    intro = client(endpoint, Clock(), cache_size=4)
    for i in range(10):
        asyncio.run(intro.introspect(f"t{i}"))
    assert len(intro._cache) == 4
