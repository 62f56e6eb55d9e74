"""/config on the admin listener: the running config, every secret in it redacted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.integration.helpers import RecordingUpstream, free_port, gateway_config, run_gateway
from tests.integration.observability_helpers import admin_get

SECRET = "introspection-secret-4f2a"


def test_config_shows_the_running_config_without_its_secrets(tmp_path: Path, upstream: RecordingUpstream) -> None:
    key_hash = "sha256:" + hashlib.sha256(b"partner-key").hexdigest()
    routes = [{"name": "partners", "match": {"paths": ["/"]}, "to": "origin",
               "plugins": {"oauth2_introspection": {"url": f"{upstream.url}/introspect", "client_id": "gw",
                                                    "client_secret": "${INTROSPECT_SECRET}"},
                           "api_key": {"header": "X-Api-Key"}},
               "auth_any": ["oauth2_introspection", "api_key"]}]
    config = gateway_config(free_port(), free_port(), {"origin": [upstream.url]}, routes,
                            consumers=[{"name": "acme", "api_keys": [key_hash]}],
                            observability={"access_log": False})
    with run_gateway(tmp_path, config, env={"INTROSPECT_SECRET": SECRET}) as gateway:
        status, content_type, body = admin_get(gateway, "/config")
    assert status == 200 and content_type == "application/json"
    assert SECRET.encode() not in body and key_hash.encode() not in body
    shown = json.loads(body)
    plugins = shown["routes"][0]["plugins"]
    assert plugins["oauth2_introspection"]["client_secret"] == "<redacted>"
    assert plugins["oauth2_introspection"]["client_id"] == "gw"
    assert plugins["api_key"] == {"header": "X-Api-Key"}
    assert shown["consumers"][0]["api_keys"] == "<redacted>"
    assert shown["upstreams"]["origin"]["targets"] == [upstream.url]
    assert shown["observability"]["metrics"] == {"prometheus": True}
