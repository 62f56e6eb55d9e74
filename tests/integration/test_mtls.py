"""Client certificates (mTLS) as clients and services meet them: the handshake asks for one, `mtls` maps
its subject to a consumer, `allow.subjects` restricts a route, and the upstream learns of it through
X-Forwarded-Client-Cert, which no client can forge."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from frontgate.auth.consumers import hash_key
from tests.certs import CA
from tests.integration.helpers import RecordingUpstream, RunningGateway, run_gateway
from tests.integration.tls_helpers import TlsClient, client_context, plain_port, tls_gateway_config, tls_get

PARTNER_KEY = "partner-key-0123456789"
BILLING_SUBJECT = "CN=billing.internal,O=Acme"
FORGED = 'Hash=00;Subject="CN=admin,O=Acme"'


@dataclass
class Setup:
    gateway: RunningGateway
    upstream: RecordingUpstream
    server_ca: CA
    billing: tuple[str, str]  # cert, key paths
    billing_der: bytes
    stranger: tuple[str, str]  # signed by the clients' CA, listed nowhere
    rogue: tuple[str, str]  # signed by a CA the gateway does not trust
    config: dict[str, Any]

    def context(self, client: tuple[str, str] | None = None) -> ssl.SSLContext:
        return client_context(self.server_ca, client)

    def get(self, path: str, client: tuple[str, str] | None = None, **headers: str) -> Any:
        return tls_get(self.gateway.port, self.context(client), path, "api.example.com", headers)

    def forwarded(self, response: Any) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}
        for name, value in json.loads(response.body)["headers"]:
            seen.setdefault(name, []).append(value)
        return seen


def _routes() -> list[dict[str, Any]]:
    return [
        {"name": "mtls", "match": {"paths": ["/mtls"]}, "to": "origin",
         "plugins": {"mtls": {}, "allow": {"groups": ["internal"]},
                     "rate_limit": {"limits": [{"name": "per-consumer", "rate": "1000/s", "key": "consumer"}]}}},
        {"name": "subjects", "match": {"paths": ["/subjects"]}, "to": "origin",
         "plugins": {"allow": {"subjects": [BILLING_SUBJECT]}}},
        {"name": "any", "match": {"paths": ["/any"]}, "to": "origin",
         "plugins": {"mtls": {}, "api_key": {"header": "X-Api-Key", "hide": True}}, "auth_any": ["mtls", "api_key"]},
        {"name": "open", "match": {"paths": ["/open"]}, "to": "origin"},
    ]


def _start(tmp_path: Path, upstream: RecordingUpstream, client_cert: str, http2: bool = False) -> Iterator[Setup]:
    server_ca, clients, rogue_ca = CA("server CA"), CA("clients CA"), CA("rogue CA")
    cert, key = server_ca.issue("api.example.com").write(tmp_path, "server")
    billing = clients.issue("billing.internal", uris=("spiffe://acme/billing",), client=True,
                            subject=[(NameOID.ORGANIZATION_NAME, "Acme"), (NameOID.COMMON_NAME, "billing.internal")])
    stranger = clients.issue(client=True, subject=[(NameOID.ORGANIZATION_NAME, "Acme"),
                                                   (NameOID.COMMON_NAME, "stranger")])
    rogue = rogue_ca.issue(client=True, subject=[(NameOID.ORGANIZATION_NAME, "Acme"),
                                                 (NameOID.COMMON_NAME, "billing.internal")])
    tls = {"certificates": [{"cert": cert, "key": key}], "client_ca": clients.write(tmp_path, "clients-ca"),
           "client_cert": client_cert, "http2": http2}
    consumers = [
        # Written loosely on purpose: the subject is normalized when the config is read.
        {"name": "billing-service", "groups": ["internal"], "mtls_subjects": ["cn=billing.internal, o=Acme"]},
        {"name": "partner", "groups": ["partners"], "api_keys": [hash_key(PARTNER_KEY)]},
    ]
    config = tls_gateway_config(tls, {"origin": [upstream.url]}, _routes(), consumers=consumers)
    with run_gateway(tmp_path, config) as gw:
        yield Setup(gw, upstream, server_ca, billing.write(tmp_path, "billing"),
                    billing.cert.public_bytes(serialization.Encoding.DER), stranger.write(tmp_path, "stranger"),
                    rogue.write(tmp_path, "rogue"), config)


@pytest.fixture
def optional(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[Setup]:
    yield from _start(tmp_path, upstream, "optional")


def test_required_client_certificates_refuse_handshakes_without_a_valid_one(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    for setup in _start(tmp_path, upstream, "required"):
        for client in (None, setup.rogue):
            # With TLS 1.3 the client may finish its side first; the refusal then arrives on the first read.
            with pytest.raises((ssl.SSLError, ConnectionError)), \
                    TlsClient(setup.gateway.port, setup.context(client), "api.example.com") as conn:
                conn.request("/open")
        assert setup.get("/open", setup.billing).status == 200
        assert [r.target for r in upstream.requests] == ["/open"]


def test_optional_client_certificates_let_clients_without_one_in_unauthenticated(optional: Setup) -> None:
    response = optional.get("/open")
    assert response.status == 200
    assert "x-forwarded-client-cert" not in optional.forwarded(response)
    # A certificate from an unknown CA is still refused: optional means "may be absent", not "unchecked".
    with pytest.raises((ssl.SSLError, ConnectionError)), \
            TlsClient(optional.gateway.port, optional.context(optional.rogue), "api.example.com") as conn:
        conn.request("/open")


def test_the_verified_certificate_is_forwarded_as_x_forwarded_client_cert_and_a_forged_one_never(
    optional: Setup
) -> None:
    response = optional.get("/open", optional.billing, **{"X-Forwarded-Client-Cert": FORGED})
    values = optional.forwarded(response)["x-forwarded-client-cert"]
    digest = hashlib.sha256(optional.billing_der).hexdigest()
    assert values == [f'Hash={digest};Subject="{BILLING_SUBJECT}";URI=spiffe://acme/billing;DNS=billing.internal']

    # Without a certificate, or over plain HTTP, the client's copy is dropped and nothing is set.
    for response in (optional.get("/open", **{"X-Forwarded-Client-Cert": FORGED}),
                     optional.get("/any", **{"x-forwarded-client-cert": FORGED, "X-Api-Key": PARTNER_KEY})):
        assert response.status == 200
        assert "x-forwarded-client-cert" not in optional.forwarded(response)
    plain = httpx.get(f"http://127.0.0.1:{plain_port(optional.config)}/open",
                      headers={"X-Forwarded-Client-Cert": FORGED}, timeout=5)
    assert "x-forwarded-client-cert" not in {name for name, _ in plain.json()["headers"]}


def test_mtls_maps_the_subject_to_its_consumer_for_allow_limits_upstream_and_the_access_log(
    optional: Setup
) -> None:
    with TlsClient(optional.gateway.port, optional.context(optional.billing), "api.example.com") as conn:
        for _ in range(2):  # every request of the connection carries the identity
            response = conn.request("/mtls/x", {"X-Consumer": "partner"})
            assert response.status == 200
            assert optional.forwarded(response)["x-consumer"] == ["billing-service"]
            assert response.header("ratelimit-policy") is not None  # the consumer keyed the limit
    deadline = time.monotonic() + 5
    while not [r for r in optional.gateway.access_log() if r.get("path") == "/mtls/x"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {r["consumer"] for r in optional.gateway.access_log() if r.get("path") == "/mtls/x"} == {"billing-service"}


def test_mtls_answers_401_without_a_certificate_or_with_one_no_consumer_lists(optional: Setup) -> None:
    before = len(optional.upstream.requests)
    for client, challenge in ((None, "ClientCertificate"),
                              (optional.stranger, 'ClientCertificate error="unknown_subject"')):
        response = optional.get("/mtls/x", client)
        assert response.status == 401
        assert response.header("www-authenticate") == challenge
        assert json.loads(response.body)["error"] == "unauthorized"
    assert len(optional.upstream.requests) == before


def test_mtls_inside_auth_any_a_certificate_or_an_api_key_will_do(optional: Setup) -> None:
    by_cert = optional.get("/any/x", optional.billing)
    by_key = optional.get("/any/x", **{"X-Api-Key": PARTNER_KEY})
    neither = optional.get("/any/x", optional.stranger)
    assert (by_cert.status, by_key.status, neither.status) == (200, 200, 401)
    assert optional.forwarded(by_cert)["x-consumer"] == ["billing-service"]
    assert optional.forwarded(by_key)["x-consumer"] == ["partner"]
    assert "x-api-key" not in optional.forwarded(by_key)
    assert neither.headers["www-authenticate"] == ['ClientCertificate error="unknown_subject"',
                                                   'ApiKey header="X-Api-Key"']


def test_allow_subjects_admits_listed_subjects_only(optional: Setup) -> None:
    assert optional.get("/subjects", optional.billing).status == 200
    assert optional.get("/subjects", optional.stranger).status == 403
    missing = optional.get("/subjects")
    assert missing.status == 401
    assert missing.header("www-authenticate") == "ClientCertificate"


def test_over_http2_the_certificate_maps_to_the_consumer_and_is_forwarded(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    for setup in _start(tmp_path, upstream, "optional", http2=True):
        url = f"https://127.0.0.1:{setup.gateway.port}/mtls"
        sni = {"sni_hostname": "api.example.com"}  # the certificate's name, without DNS
        with httpx.Client(http2=True, verify=setup.context(setup.billing), timeout=10) as client:
            response = client.get(url, headers={"x-forwarded-client-cert": FORGED}, extensions=sni)
        with httpx.Client(http2=True, verify=setup.context(), timeout=10) as client:
            anonymous = client.get(url, extensions=sni)
        assert response.http_version == "HTTP/2" and response.status_code == 200
        forwarded = dict(response.json()["headers"])
        assert forwarded["x-consumer"] == "billing-service"
        assert forwarded["x-forwarded-client-cert"].endswith(
            f'Subject="{BILLING_SUBJECT}";URI=spiffe://acme/billing;DNS=billing.internal')
        assert anonymous.http_version == "HTTP/2" and anonymous.status_code == 401
