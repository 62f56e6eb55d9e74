"""The cors plugin in the real gateway, as a browser meets it: preflights answered at the edge (even where the
route takes no OPTIONS and auth would refuse a credential-less request), allowed origins get the headers on
the upstream's answers and on the gateway's own errors, other origins get none."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from frontgate.auth.consumers import hash_key
from tests.integration.helpers import (
    ReceivedRequest,
    RecordingUpstream,
    RunningGateway,
    free_port,
    gateway_config,
    json_response,
    run_gateway,
)

APP = "https://app.example.com"
KEY = "cors-test-key-5d1"


def _answer_with_its_own_cors(request: ReceivedRequest, _sock: object) -> bytes:
    return json_response(200, {"path": request.target}, {"access-control-allow-origin": "https://evil.example",
                                                         "x-total-count": "7"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(_answer_with_its_own_cors)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    routes = [
        # Global cors (below) applies here; the methods leave OPTIONS out and auth needs a key.
        {"name": "orders", "match": {"paths": ["/orders"], "methods": ["GET", "POST", "DELETE"]}, "to": "app",
         "plugins": {"api_key": {"header": "X-Api-Key"}}},
        {"name": "public", "match": {"paths": ["/public"]}, "to": "app",
         "plugins": {"cors": {"origins": ["*"], "headers": ["X-Trace"]}}},
        {"name": "plain", "match": {"paths": ["/plain"], "methods": ["GET"]}, "to": "app",
         "plugins": {"cors": {"enabled": False}}},
    ]
    plugins = {"cors": {"origins": [APP, "https://*.partners.example.com"], "credentials": True,
                        "max_age": "10m", "expose_headers": ["X-Total-Count"]}}
    port = free_port()
    config = gateway_config(port, free_port(), {"app": [upstream.url]}, routes, plugins=plugins,
                            consumers=[{"name": "web", "api_keys": [hash_key(KEY)]}])
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}", "h2c": True}]  # HTTP/1.1 and h2c
    with run_gateway(tmp_path_factory.mktemp("cors"), config) as running:
        yield running


def _preflight(gateway: RunningGateway, path: str, origin: str, method: str = "DELETE",
               headers: str | None = "content-type, x-api-key") -> httpx.Response:
    asked = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        asked["access-control-request-headers"] = headers
    return httpx.options(gateway.url(path), headers=asked, timeout=10)


def test_a_preflight_is_answered_at_the_edge_with_what_the_browser_needs(
        gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    before = len(upstream.requests)
    response = _preflight(gateway, "/orders/7", APP)
    assert response.status_code == 204 and response.content == b""
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-allow-methods"] == "GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS"
    assert response.headers["access-control-allow-headers"] == "content-type, x-api-key"
    assert response.headers["access-control-max-age"] == "600"
    assert "Origin" in response.headers["vary"]
    assert len(upstream.requests) == before  # neither the upstream nor the api_key check saw it


def test_subdomain_wildcards_match_subdomains_only(gateway: RunningGateway) -> None:
    ok = _preflight(gateway, "/orders", "https://shop.eu.partners.example.com")
    assert ok.headers["access-control-allow-origin"] == "https://shop.eu.partners.example.com"
    for origin in ("https://partners.example.com", "https://evilpartners.example.com", "http://x.partners.example.com"):
        assert "access-control-allow-origin" not in _preflight(gateway, "/orders", origin).headers


def test_an_origin_not_listed_gets_no_cors_headers(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    refused = _preflight(gateway, "/orders", "https://evil.example")
    assert refused.status_code == 204
    assert not [name for name in refused.headers if name.startswith("access-control-")]
    response = httpx.get(gateway.url("/orders"), headers={"origin": "https://evil.example", "x-api-key": KEY},
                         timeout=10)
    assert response.status_code == 200  # served: CORS guards the browser's user, the browser drops it
    assert "access-control-allow-origin" not in response.headers  # the upstream's own value is removed too
    assert response.headers["x-total-count"] == "7"
    assert "Origin" in response.headers["vary"]


def test_an_allowed_origin_gets_the_headers_on_the_upstream_answer(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url("/orders"), headers={"origin": APP, "x-api-key": KEY}, timeout=10)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP  # ours, not the upstream's
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-expose-headers"] == "X-Total-Count"
    assert response.headers.get_list("access-control-allow-origin") == [APP]
    assert "access-control-allow-methods" not in response.headers  # preflight-only fields


def test_the_gateways_own_errors_carry_the_headers_so_the_page_can_read_them(gateway: RunningGateway) -> None:
    refused = httpx.get(gateway.url("/orders"), headers={"origin": APP}, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]
    assert refused.headers["access-control-allow-origin"] == APP
    missing = httpx.get(gateway.url("/nowhere"), headers={"origin": APP}, timeout=10)
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == APP


def test_any_origin_without_credentials_is_a_star_and_configured_headers_win(gateway: RunningGateway) -> None:
    response = _preflight(gateway, "/public", "https://anyone.example", method="PUT")
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-headers"] == "X-Trace"
    assert "access-control-allow-credentials" not in response.headers
    assert "vary" not in response.headers  # the same answer for every origin
    plain = httpx.get(gateway.url("/public"), headers={"origin": "https://anyone.example"}, timeout=10)
    assert plain.headers["access-control-allow-origin"] == "*"


def test_with_cors_on_the_gateway_owns_the_cors_headers_and_with_it_off_the_upstream_does(
        gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url("/orders"), headers={"x-api-key": KEY}, timeout=10)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    upstreams_own = httpx.get(gateway.url("/plain"), headers={"origin": APP}, timeout=10)
    assert upstreams_own.headers["access-control-allow-origin"] == "https://evil.example"
    off = _preflight(gateway, "/plain", APP, method="GET")
    assert off.status_code == 405  # no cors on this route: the preflight is an OPTIONS like any other
    assert "access-control-allow-methods" not in off.headers


def test_a_bad_requested_headers_list_is_not_echoed(gateway: RunningGateway) -> None:
    response = _preflight(gateway, "/orders", APP, headers="x-ok, bad header; q=1")
    assert response.status_code == 204
    assert "access-control-allow-headers" not in response.headers


def test_over_http2_preflights_and_responses_behave_the_same(gateway: RunningGateway,
                                                              upstream: RecordingUpstream) -> None:
    before = len(upstream.requests)
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        preflight = client.options(gateway.url("/orders"), headers={"origin": APP,
                                                                    "access-control-request-method": "POST"})
        assert preflight.http_version == "HTTP/2" and preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == APP
        assert len(upstream.requests) == before
        response = client.get(gateway.url("/orders"), headers={"origin": APP, "x-api-key": KEY})
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == APP
