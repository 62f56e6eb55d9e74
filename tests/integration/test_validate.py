"""The validate plugin in the real gateway: bodies checked against a JSON Schema before the upstream sees them,
after auth; the first problem named; the body that passes reaches the upstream byte for byte, whatever its
framing; bodies past the limit refused with 413."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from frontgate.auth.consumers import hash_key
from tests.integration.helpers import RecordingUpstream, RunningGateway, free_port, gateway_config, run_gateway

KEY = "validate-test-key-91"
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["amount", "currency"],
    "properties": {
        "amount": {"type": "integer", "minimum": 1},
        "currency": {"enum": ["EUR", "USD"]},
        "items": {"type": "array", "items": {"type": "object", "required": ["qty"],
                                              "properties": {"qty": {"type": "integer"}}}},
    },
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("validate")
    schema_file = directory / "payment.json"
    schema_file.write_text(json.dumps(SCHEMA))
    routes = [
        {"name": "payments", "match": {"paths": ["/payments"]}, "to": "app",
         "plugins": {"api_key": {"header": "X-Api-Key"},
                     "validate": {"json_schema": str(schema_file), "body_limit": "2KiB"}}},
        {"name": "inline", "match": {"paths": ["/inline"]}, "to": "app",
         "plugins": {"validate": {"json_schema": {"type": "array", "maxItems": 2}}}},
    ]
    port = free_port()
    config = gateway_config(port, free_port(), {"app": [upstream.url]}, routes,
                            consumers=[{"name": "shop", "api_keys": [hash_key(KEY)]}])
    config["server"]["listen"] = [{"address": f"127.0.0.1:{port}", "h2c": True}]  # HTTP/1.1 and h2c
    with run_gateway(directory, config) as running:
        yield running


def _post(gateway: RunningGateway, path: str, body: bytes, content_type: str = "application/json",
          key: str | None = KEY) -> httpx.Response:
    headers = {"content-type": content_type, **({"x-api-key": key} if key else {})}
    return httpx.post(gateway.url(path), content=body, headers=headers, timeout=10)


def test_a_body_that_matches_reaches_the_upstream_unchanged(gateway: RunningGateway,
                                                            upstream: RecordingUpstream) -> None:
    body = b'{"amount": 5, "currency": "EUR", "items": [{"qty": 1}]}'
    response = _post(gateway, "/payments", body)
    assert response.status_code == 200
    assert upstream.requests[-1].body == body
    assert upstream.requests[-1].header("content-length") == str(len(body))


def test_a_body_the_schema_refuses_gets_400_naming_the_place(gateway: RunningGateway,
                                                            upstream: RecordingUpstream) -> None:
    before = len(upstream.requests)
    refused = _post(gateway, "/payments", b'{"amount": 5, "currency": "EUR", "items": [{"qty": 1}, {"qty": "two"}]}')
    assert refused.status_code == 400
    error = refused.json()
    assert error["error"] == "invalid_body" and error["request_id"]
    assert "$.items[1].qty" in error["message"] and "integer" in error["message"]
    missing = _post(gateway, "/payments", b'{"amount": 0}')
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_body"
    assert len(upstream.requests) == before  # nothing refused went upstream


def test_what_is_not_json_is_refused(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    before = len(upstream.requests)
    assert _post(gateway, "/payments", b'{"amount": 5,', "application/json").status_code == 400
    assert _post(gateway, "/payments", b"amount=5", "application/x-www-form-urlencoded").status_code == 415
    assert _post(gateway, "/payments", b"", "application/json").status_code == 400  # POST needs a body
    assert _post(gateway, "/inline", b"[1]", "application/problem+json").status_code == 200  # +json is JSON
    assert len(upstream.requests) == before + 1


def test_a_body_nested_deeper_than_the_stack_gets_400_and_the_worker_lives(gateway: RunningGateway) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    response = _post(gateway, "/inline", deep)
    assert response.status_code == 400 and response.json()["error"] == "invalid_body"
    assert _post(gateway, "/inline", b"[1]").status_code == 200


def test_auth_comes_before_the_body_is_judged(gateway: RunningGateway) -> None:
    response = _post(gateway, "/payments", b"not json at all", key=None)
    assert response.status_code == 401


def test_bodies_past_the_limit_get_413_and_never_reach_the_upstream(gateway: RunningGateway,
                                                                   upstream: RecordingUpstream) -> None:
    before = len(upstream.requests)
    big = json.dumps({"amount": 5, "currency": "EUR", "items": [{"qty": 1}] * 400}).encode()
    assert len(big) > 2048
    assert _post(gateway, "/payments", big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no length announced: refused as soon as the limit is crossed
        for _ in range(40):
            yield b" " * 100
    streamed = httpx.post(gateway.url("/payments"), content=chunks(),
                          headers={"content-type": "application/json", "x-api-key": KEY}, timeout=10)
    assert streamed.status_code == 413
    assert len(upstream.requests) == before


def test_a_chunked_body_is_read_whole_checked_and_forwarded(gateway: RunningGateway,
                                                             upstream: RecordingUpstream) -> None:
    parts = [b'{"amount": 7, ', b'"currency": "USD"}']

    def chunks() -> Iterator[bytes]:
        yield from parts
    response = httpx.post(gateway.url("/payments"), content=chunks(),
                          headers={"content-type": "application/json", "x-api-key": KEY}, timeout=10)
    assert response.status_code == 200
    assert upstream.requests[-1].body == b"".join(parts)


def test_get_without_a_body_passes_and_the_connection_stays_usable_after_a_400(
        gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    assert httpx.get(gateway.url("/inline"), timeout=10).status_code == 200
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        bad, good = b"[1,2,3]", b"[1]"
        client.sendall(b"POST /inline HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                       b"content-length: %d\r\n\r\n%s" % (len(bad), bad))
        client.sendall(b"POST /inline HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                       b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(good), good))
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"HTTP/1.1 200 " in received  # the second request on the same connection was served
    assert upstream.requests[-1].body == good


def test_over_http2_bodies_are_checked_the_same(gateway: RunningGateway, upstream: RecordingUpstream) -> None:
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        headers = {"content-type": "application/json", "x-api-key": KEY}
        good = client.post(gateway.url("/payments"), content=b'{"amount": 9, "currency": "EUR"}', headers=headers)
        assert good.http_version == "HTTP/2" and good.status_code == 200
        assert upstream.requests[-1].body == b'{"amount": 9, "currency": "EUR"}'
        bad = client.post(gateway.url("/payments"), content=b'{"amount": 9}', headers=headers)
        assert bad.status_code == 400 and "currency" in bad.json()["message"]


def test_a_schema_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    from frontgate.config.loader import load_config
    from frontgate.errors import ConfigError
    from frontgate.plugins import plugin_models

    config = tmp_path / "gw.yaml"
    config.write_text('version: 1\nupstreams: {app: {targets: ["http://127.0.0.1:9"]}}\nroutes:\n'
                      '  - name: r\n    match: {paths: [/]}\n    to: app\n'
                      '    plugins:\n      validate: {json_schema: {type: nonsense}}\n')
    with pytest.raises(ConfigError) as caught:
        load_config([str(config)], {}, plugin_models())
    (problem,) = caught.value.problems
    assert str(problem).startswith(f"{config}:8:")
    assert "routes[0].plugins.validate.json_schema" in str(problem) and "not a valid JSON Schema" in str(problem)
