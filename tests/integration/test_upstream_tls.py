"""TLS to upstream services: verified against `tls.ca` (or the system store) under `tls.server_name`,
the gateway's own certificate for services that require one, the same context for health checks, and a
failed verification as a 502 with a log line that says which upstream and why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.certs import CA
from tests.integration.helpers import free_port, gateway_config, run_gateway
from tests.integration.tls_helpers import TlsUpstream, wait_for_log


def _config(upstream: TlsUpstream, tls: dict[str, Any] | None, **upstream_settings: Any) -> dict[str, Any]:
    config = gateway_config(free_port(), free_port(), {"secure": [upstream.url]},
                            [{"name": "all", "match": {"paths": ["/"]}, "to": "secure"}],
                            observability={"access_log": False})
    settings = config["upstreams"]["secure"]
    if tls is not None:
        settings["tls"] = tls
    settings.update(upstream_settings)
    return config


def test_https_upstream_verified_by_its_ca_and_name_gets_the_gateways_client_certificate(tmp_path: Path) -> None:
    services, gateways = CA("services CA"), CA("gateways CA")
    upstream = TlsUpstream(services.issue("payments.internal"), tmp_path, client_ca=gateways)
    cert, key = gateways.issue("gateway.internal", client=True).write(tmp_path, "gw")
    tls = {"ca": services.write(tmp_path, "services-ca"), "cert": cert, "key": key,
           "server_name": "payments.internal"}
    # Health checks every 0.2 s; one failed probe would take the only target out (503s).
    check = {"path": "/healthz", "interval": "200ms", "unhealthy_after": 1, "healthy_after": 1}
    try:
        with run_gateway(tmp_path, _config(upstream, tls, health_check=check)) as gw:
            first = httpx.get(gw.url("/pay"), timeout=5)
            assert first.status_code == 200
            time.sleep(1.0)
            assert httpx.get(gw.url("/pay"), timeout=5).status_code == 200
            probes = [r for r in upstream.requests if r.target == "/healthz"]
            assert len(probes) >= 2  # the probes verified the service and presented the certificate too
            assert probes[0].header("user-agent") == "frontgate-health-check"
            assert upstream.handshake_errors == []
            assert set(upstream.peer_subjects) == {"CN=gateway.internal"}
    finally:
        upstream.close()


def test_an_upstream_certificate_that_does_not_verify_is_a_502_and_a_log_line_with_the_reason(
    tmp_path: Path
) -> None:
    services, other = CA("services CA"), CA("someone else's CA")
    cases = [
        # (the upstream's certificate, the gateway's tls settings, the reason logged)
        (other.issue("payments.internal"), {"ca": "services-ca", "server_name": "payments.internal"},
         "certificate verify failed: unable to get local issuer certificate"),
        (services.issue("payments.internal"), None,  # no ca: the system store, which never heard of it
         "certificate verify failed: unable to get local issuer certificate"),
        (services.issue("payments.internal"), {"ca": "services-ca"},  # verified as 127.0.0.1, not by name
         "certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'"),
        (services.issue("payments.internal"), {"ca": "services-ca", "server_name": "orders.internal"},
         "certificate verify failed: Hostname mismatch, certificate is not valid for 'orders.internal'"),
    ]
    ca_path = services.write(tmp_path, "services-ca")
    for server_cert, tls, reason in cases:
        upstream = TlsUpstream(server_cert, tmp_path)
        if tls is not None and tls["ca"] == "services-ca":
            tls["ca"] = ca_path
        try:
            with run_gateway(tmp_path, _config(upstream, tls)) as gw:
                response = httpx.get(gw.url("/pay"), timeout=5)
                assert response.status_code == 502
                assert response.json()["error"] == "bad_gateway"
                assert str(upstream.port) not in response.text  # no upstream address to the client
                wait_for_log(gw, f"upstream secure target {upstream.url}: {reason}")
                assert upstream.requests == []
        finally:
            upstream.close()


def test_a_service_that_requires_a_client_certificate_the_gateway_lacks_gives_502(tmp_path: Path) -> None:
    services, gateways = CA("services CA"), CA("gateways CA")
    upstream = TlsUpstream(services.issue("payments.internal"), tmp_path, client_ca=gateways)
    tls = {"ca": services.write(tmp_path, "services-ca"), "server_name": "payments.internal"}
    try:
        with run_gateway(tmp_path, _config(upstream, tls)) as gw:
            assert httpx.get(gw.url("/pay"), timeout=5).status_code == 502
            assert upstream.requests == []
    finally:
        upstream.close()
