"""TLS termination as a client meets it: certificates by SNI, protocol versions and suites, ALPN, and
certificate files re-read on reload without dropping open connections."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.certs import CA
from tests.integration.helpers import RecordingUpstream, run_gateway
from tests.integration.tls_helpers import (
    TlsClient,
    client_context,
    tls_gateway_config,
    tls_get,
    wait_for_log,
)

ROUTES = [{"name": "all", "match": {"paths": ["/"]}, "to": "origin"}]


def _dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


@pytest.fixture
def ca() -> CA:
    return CA()


def _config(tmp_path: Path, ca: CA, upstream: RecordingUpstream, names: list[list[str]],
            **tls: Any) -> dict[str, Any]:
    certificates = []
    for index, dns in enumerate(names):
        cert, key = ca.issue(*dns).write(tmp_path, f"server{index}")
        certificates.append({"cert": cert, "key": key})
    return tls_gateway_config({"certificates": certificates, **tls}, {"origin": [upstream.url]}, ROUTES,
                              observability={"access_log": False})


def test_sni_picks_the_certificate_by_exact_then_wildcard_name_and_the_first_is_the_default(
    tmp_path: Path, ca: CA, upstream: RecordingUpstream
) -> None:
    config = _config(tmp_path, ca, upstream,
                     [["default.example.com"], ["api.example.com"], ["*.apps.example.com", "apps.example.com"]])
    with run_gateway(tmp_path, config) as gw:
        context = client_context(ca)
        expected = {
            "api.example.com": "api.example.com",
            "API.Example.com": "api.example.com",  # names are case-insensitive
            "shop.apps.example.com": "*.apps.example.com",
            "apps.example.com": "*.apps.example.com",  # an exact name of the same certificate
            "deep.shop.apps.example.com": "default.example.com",  # a wildcard covers one label only
            "unknown.example.org": "default.example.com",
            None: "default.example.com",  # no SNI at all
        }
        for server_name, first_name in expected.items():
            with TlsClient(gw.port, context, server_name) as client:
                assert _dns_names(client.server_cert)[0] == first_name, server_name
                response = client.request("/hello")
                assert response.status == 200
                forwarded = dict(json.loads(response.body)["headers"])
                assert forwarded["x-forwarded-proto"] == "https"


def test_only_tls_12_and_13_with_forward_secret_aead_suites_are_accepted(
    tmp_path: Path, ca: CA, upstream: RecordingUpstream
) -> None:
    config = _config(tmp_path, ca, upstream, [["api.example.com"]])
    rsa_cert, rsa_key = ca.issue("rsa.example.com", rsa_key=True).write(tmp_path, "rsa")
    config["server"]["listen"][0]["tls"]["certificates"].append({"cert": rsa_cert, "key": rsa_key})
    with run_gateway(tmp_path, config) as gw:
        tls13 = client_context(ca, minimum=ssl.TLSVersion.TLSv1_3)
        with TlsClient(gw.port, tls13, "api.example.com") as client:
            assert client.sock.version() == "TLSv1.3"
            assert client.request().status == 200
        for name, suite in (("api.example.com", "ECDHE-ECDSA-AES128-GCM-SHA256"),
                            ("api.example.com", "ECDHE-ECDSA-CHACHA20-POLY1305"),
                            ("rsa.example.com", "ECDHE-RSA-AES256-GCM-SHA384")):
            modern12 = client_context(ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite)
            with TlsClient(gw.port, modern12, name) as client:
                assert (client.sock.version(), client.sock.cipher()[0]) == ("TLSv1.2", suite)
                assert client.request().status == 200

        # An old client: TLS 1.1 (its library allowed to offer it) is refused by the gateway, which ends
        # the handshake (with an alert, or by closing).
        refused = "(?i)protocol version|unsupported protocol|handshake failure|EOF occurred"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1 itself is deprecated
            old = client_context(ca, minimum=ssl.TLSVersion.TLSv1_1, maximum=ssl.TLSVersion.TLSv1_1,
                                 ciphers="DEFAULT:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError, match=refused):
            TlsClient(gw.port, old, "api.example.com")

        # TLS 1.2 suites with CBC instead of an AEAD (which OpenSSL's defaults still allow), or with RSA key
        # exchange (no forward secrecy), are refused.
        for name, suite in (("api.example.com", "ECDHE-ECDSA-AES128-SHA256"),
                            ("rsa.example.com", "ECDHE-RSA-AES128-SHA256"),
                            ("rsa.example.com", "AES128-GCM-SHA256")):
            weak = client_context(ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite)
            with pytest.raises(ssl.SSLError, match=refused):
                TlsClient(gw.port, weak, name)


def test_a_client_that_never_finishes_its_handshake_is_cut_after_read_header(
    tmp_path: Path, ca: CA, upstream: RecordingUpstream
) -> None:
    config = _config(tmp_path, ca, upstream, [["api.example.com"]])
    config["server"]["timeouts"]["read_header"] = "1s"
    with run_gateway(tmp_path, config) as gw, socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and then nothing
        assert sock.recv(1024) == b""  # closed by the gateway
        assert 0.8 < time.monotonic() - started < 5


def test_alpn_offers_h2_only_when_the_listener_has_http2(tmp_path: Path, ca: CA, upstream: RecordingUpstream) -> None:
    # The client offers h2 first; tests/integration/test_http2.py covers what happens once it is chosen.
    for http2, chosen in ((False, "http/1.1"), (True, "h2")):
        config = _config(tmp_path, ca, upstream, [["api.example.com"]], http2=http2)
        with run_gateway(tmp_path, config) as gw, \
                TlsClient(gw.port, client_context(ca), "api.example.com") as client:
            assert client.sock.selected_alpn_protocol() == chosen


def test_reload_serves_re_read_certificate_files_while_open_connections_keep_working(
    tmp_path: Path, ca: CA, upstream: RecordingUpstream
) -> None:
    config = _config(tmp_path, ca, upstream, [["api.example.com"]])
    context = client_context(ca)
    with run_gateway(tmp_path, config) as gw, TlsClient(gw.port, context, "api.example.com") as before:
        assert before.request("/one").status == 200
        old_serial = before.server_cert.serial_number

        renewed = ca.issue("api.example.com")
        renewed.write(tmp_path, "server0")  # the same files, new contents (as certbot or cert-manager do)
        gw.process.send_signal(signal.SIGHUP)
        wait_for_log(gw, "generation 2")

        assert before.request("/two").status == 200  # the connection opened before the reload
        assert before.server_cert.serial_number == old_serial
        with TlsClient(gw.port, context, "api.example.com") as after:
            assert after.server_cert.serial_number == renewed.serial
            assert after.request("/three").status == 200
        assert [r.target for r in upstream.requests] == ["/one", "/two", "/three"]


def test_a_reload_with_a_mismatched_key_is_refused_naming_the_file_line_and_field(
    tmp_path: Path, ca: CA, upstream: RecordingUpstream
) -> None:
    config = _config(tmp_path, ca, upstream, [["api.example.com"]])
    context = client_context(ca)
    with run_gateway(tmp_path, config) as gw:
        serial = tls_get_serial(gw.port, context)
        other = ca.issue("api.example.com")
        key_path = Path(config["server"]["listen"][0]["tls"]["certificates"][0]["key"])
        key_path.write_bytes(other.key_pem)  # a new key without its certificate
        gw.process.send_signal(signal.SIGHUP)
        logs = wait_for_log(gw, "reload rejected")
        assert f"{gw.config_path}:" in logs
        assert "server.listen[0].tls.certificates[0].key:" in logs
        assert f"the key in '{key_path}' does not match the certificate" in logs

        # Still serving the old certificate, from memory.
        assert tls_get_serial(gw.port, context) == serial
        assert tls_get(gw.port, context, "/still", "api.example.com").status == 200


def test_a_reload_that_would_change_whether_client_certificates_are_asked_for_is_refused(
    tmp_path: Path, ca: CA, upstream: RecordingUpstream
) -> None:
    config = _config(tmp_path, ca, upstream, [["api.example.com"]])
    with run_gateway(tmp_path, config) as gw:
        config["server"]["listen"][0]["tls"]["client_ca"] = ca.write(tmp_path, "clients-ca")
        gw.config_path.write_text(json.dumps(config))
        gw.process.send_signal(signal.SIGHUP)
        logs = wait_for_log(gw, "reload rejected")
        assert "server.listen[0].tls.client_ca: asking for client certificates was turned on or off" in logs
        assert "takes a restart" in logs
        assert tls_get(gw.port, client_context(ca), "/", "api.example.com").status == 200


def tls_get_serial(port: int, context: ssl.SSLContext) -> int:
    with TlsClient(port, context, "api.example.com") as client:
        return client.server_cert.serial_number
