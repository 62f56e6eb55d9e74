"""The cache plugin in the real gateway, before a real upstream that counts its calls: what HTTP caching says
may be stored is served again without the upstream, what it forbids never is; freshness, Vary, conditional
requests, invalidation by unsafe methods, credentials, responses too large to keep, and one cache shared by
two gateways through a real Redis."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from frontgate.auth.consumers import hash_key
from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    run_gateway,
)
from tests.integration.redis_helpers import running_redis

KEY = "cache-test-key-42"
CALLS: Counter[str] = Counter()
EXTRA_HEADERS = {
    "/catalog/maxage": "cache-control: max-age=1\r\n",
    "/catalog/nostore": "cache-control: no-store\r\n",
    "/catalog/private": "cache-control: private, max-age=60\r\n",
    "/catalog/cookie": "set-cookie: session=abc\r\n",
    "/catalog/etag": 'etag: "v1"\r\n',
    "/catalog/lang": "vary: Accept-Language\r\n",
    "/catalog/other": "vary: X-Other\r\n",
}


def _counting(request: ReceivedRequest, _sock: object) -> bytes:
    path = request.target.split("?", 1)[0]
    CALLS[request.target] += 1
    body = json.dumps({"path": request.target, "call": CALLS[request.target],
                       "lang": request.header("accept-language")}).encode()
    if path == "/catalog/big":
        body = b"x" * 5000
    status = 404 if path == "/catalog/missing" else 200
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return (head + EXTRA_HEADERS.get(path, "") + "\r\n").encode() + body


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(_counting)
    yield server
    server.close()


def _routes(shared: bool = False) -> list[dict[str, Any]]:
    cache = {"ttl": "30s", "vary": ["Accept-Language"], "body_limit": "2KiB", "shared": shared}
    return [
        {"name": "catalog", "match": {"paths": ["/catalog"]}, "to": "app", "plugins": {"cache": cache}},
        {"name": "members", "match": {"paths": ["/members"]}, "to": "app",
         "plugins": {"api_key": {}, "cache": cache}},
        {"name": "members-shared", "match": {"paths": ["/shared-members"]}, "to": "app",
         "plugins": {"api_key": {}, "cache": {**cache, "authorized": True}}},
    ]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    config = gateway_config(free_port(), free_port(), {"app": [upstream.url]}, _routes(),
                            consumers=[{"name": "web", "api_keys": [hash_key(KEY)]}])
    with run_gateway(tmp_path_factory.mktemp("cache"), config) as running:
        yield running


def _get(gateway: RunningGateway, path: str, **headers: str) -> httpx.Response:
    return httpx.get(gateway.url(path), headers={k.replace("_", "-"): v for k, v in headers.items()}, timeout=10)


def test_a_second_get_is_served_from_the_cache(gateway: RunningGateway) -> None:
    first, second = _get(gateway, "/catalog/1?page=2"), _get(gateway, "/catalog/1?page=2")
    assert first.headers["x-cache-status"] == "MISS" and second.headers["x-cache-status"] == "HIT"
    assert second.content == first.content and second.json()["call"] == 1
    assert CALLS["/catalog/1?page=2"] == 1
    assert int(second.headers["age"]) >= 0 and second.headers["content-type"] == "application/json"
    other_query = _get(gateway, "/catalog/1?page=3")
    assert other_query.headers["x-cache-status"] == "MISS"
    head = httpx.head(gateway.url("/catalog/1?page=2"), timeout=10)
    assert head.status_code == 200 and head.content == b"" and head.headers["x-cache-status"] == "HIT"
    missing = [_get(gateway, "/catalog/missing") for _ in range(2)]
    assert [r.status_code for r in missing] == [404, 404] and CALLS["/catalog/missing"] == 1


def test_what_http_caching_forbids_is_never_stored(gateway: RunningGateway) -> None:
    for path in ("/catalog/nostore", "/catalog/private", "/catalog/cookie", "/catalog/other"):
        answers = [_get(gateway, path) for _ in range(2)]
        assert [a.json()["call"] for a in answers] == [1, 2], path
        assert answers[1].headers["x-cache-status"] == "MISS"


def test_freshness_comes_from_the_response(gateway: RunningGateway) -> None:
    assert _get(gateway, "/catalog/maxage").json()["call"] == 1
    assert _get(gateway, "/catalog/maxage").headers["x-cache-status"] == "HIT"
    time.sleep(1.3)
    stale = _get(gateway, "/catalog/maxage")
    assert stale.headers["x-cache-status"] == "MISS" and stale.json()["call"] == 2


def test_the_request_may_ask_for_a_fresh_answer_or_no_caching(gateway: RunningGateway) -> None:
    _get(gateway, "/catalog/fresh")
    anew = _get(gateway, "/catalog/fresh", cache_control="no-cache")
    assert anew.headers["x-cache-status"] == "MISS" and anew.json()["call"] == 2
    assert _get(gateway, "/catalog/fresh").json()["call"] == 2  # the fresh answer was stored
    bypass = _get(gateway, "/catalog/fresh", cache_control="no-store")
    assert bypass.headers["x-cache-status"] == "BYPASS" and bypass.json()["call"] == 3


def test_vary_keeps_one_answer_per_language(gateway: RunningGateway) -> None:
    english, german = _get(gateway, "/catalog/lang", accept_language="en"), _get(gateway, "/catalog/lang",
                                                                                accept_language="de")
    assert (english.json()["lang"], german.json()["lang"]) == ("en", "de")
    again = _get(gateway, "/catalog/lang", accept_language="de")
    assert again.headers["x-cache-status"] == "HIT" and again.json()["lang"] == "de"


def test_a_matching_if_none_match_gets_304(gateway: RunningGateway) -> None:
    assert _get(gateway, "/catalog/etag").headers["etag"] == '"v1"'
    revalidated = _get(gateway, "/catalog/etag", if_none_match='"v0", "v1"')
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert revalidated.headers["etag"] == '"v1"' and "content-length" not in revalidated.headers
    assert _get(gateway, "/catalog/etag", if_none_match='"v2"').status_code == 200


def test_a_successful_change_drops_the_stored_answers(gateway: RunningGateway) -> None:
    _get(gateway, "/catalog/item")
    assert _get(gateway, "/catalog/item").headers["x-cache-status"] == "HIT"
    assert httpx.post(gateway.url("/catalog/item"), content=b"{}", timeout=10).status_code == 200
    after = _get(gateway, "/catalog/item")
    assert after.headers["x-cache-status"] == "MISS" and after.json()["call"] == 3  # GET, POST, GET


def test_an_answer_too_large_to_keep_streams_whole_every_time(gateway: RunningGateway) -> None:
    answers = [_get(gateway, "/catalog/big") for _ in range(2)]
    assert [len(a.content) for a in answers] == [5000, 5000] and CALLS["/catalog/big"] == 2


def test_answers_to_callers_with_credentials_are_kept_only_when_told(gateway: RunningGateway) -> None:
    private = [_get(gateway, "/members/1", x_api_key=KEY) for _ in range(2)]
    assert [a.headers["x-cache-status"] for a in private] == ["BYPASS", "BYPASS"]
    assert _get(gateway, "/members/1").status_code == 401  # auth still runs first
    shared = [_get(gateway, "/shared-members/1", x_api_key=KEY) for _ in range(2)]
    assert [a.headers["x-cache-status"] for a in shared] == ["MISS", "HIT"]
    assert _get(gateway, "/shared-members/1").status_code == 401  # a cached answer never skips auth


def test_with_shared_the_replicas_share_one_cache_through_redis(tmp_path: Path,
                                                                upstream: RecordingUpstream) -> None:
    with running_redis(tmp_path / "redis") as redis:
        configs = [gateway_config(free_port(), free_port(), {"app": [upstream.url]}, _routes(shared=True),
                                  store={"redis": redis.url, "timeout": "500ms"}) for _ in range(2)]
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with run_gateway(tmp_path / "a", configs[0]) as first, run_gateway(tmp_path / "b", configs[1]) as second:
            stored = _get(first, "/catalog/shared-item")
            deadline = time.monotonic() + 5
            while b"fg:cache:" not in redis.command(b"KEYS", b"fg:cache:*") and time.monotonic() < deadline:
                time.sleep(0.02)  # the store write is sent after the answer
            answer = _get(second, "/catalog/shared-item")
            assert answer.headers["x-cache-status"] == "HIT" and answer.content == stored.content
            assert CALLS["/catalog/shared-item"] == 1
