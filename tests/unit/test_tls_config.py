"""TLS settings as `frontgate validate` reports them: unusable certificate, key and CA files, settings that
only work together, and client certificate subjects, each at its `FILE:LINE:COL: field.path`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from frontgate.config.loader import LoadedConfig, load_config
from frontgate.errors import ConfigError
from frontgate.plugins import plugin_models
from tests.certs import CA


def _load(tmp_path: Path, text: str) -> LoadedConfig:
    path = tmp_path / "frontgate.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return load_config([str(path)], plugin_models=plugin_models())


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    prefix = f"{tmp_path / 'frontgate.yaml'}:"
    return [str(p).removeprefix(prefix) for p in caught.value.problems]


def _listener(cert: str, key: str, extra: str = "") -> str:
    return f"""
        version: 1
        server:
          listen:
            - address: "127.0.0.1:8443"
              tls:
                certificates:
                  - cert: {cert}
                    key: {key}
                {extra}
        """


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    return CA().issue("api.example.com").write(tmp_path, "api")


def test_a_good_listener_loads(tmp_path: Path, pair: tuple[str, str]) -> None:
    loaded = _load(tmp_path, _listener(*pair))
    tls = loaded.config.server.listen[0].tls
    assert tls is not None and tls.certificates[0].cert == pair[0]


def test_unreadable_certificate_and_key_files_are_reported_at_their_fields(tmp_path: Path) -> None:
    problems = _problems(tmp_path, _listener(str(tmp_path / "missing.pem"), str(tmp_path / "nokey.pem")))
    assert problems == [
        f"7:19: server.listen[0].tls.certificates[0].cert: cannot read certificate file "
        f"'{tmp_path / 'missing.pem'}': No such file or directory",
    ]  # the key is only checked once the certificate can be read


def test_a_file_that_is_not_pem_and_an_encrypted_key_are_named(tmp_path: Path, pair: tuple[str, str]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    assert _problems(tmp_path, _listener(str(junk), pair[1])) == [
        f"7:19: server.listen[0].tls.certificates[0].cert: '{junk}' holds no PEM certificate "
        "(-----BEGIN CERTIFICATE-----)"]
    issued = CA().issue("api.example.com")
    cert, _ = issued.write(tmp_path, "locked")
    locked = tmp_path / "locked-key.pem"
    locked.write_bytes(issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"secret")))
    assert _problems(tmp_path, _listener(cert, str(locked))) == [
        f"8:18: server.listen[0].tls.certificates[0].key: '{locked}' is an encrypted key; "
        "frontgate needs it unencrypted"]


def test_a_key_that_does_not_match_its_certificate_is_reported_at_the_key(
    tmp_path: Path, pair: tuple[str, str]
) -> None:
    _, other_key = CA().issue("api.example.com").write(tmp_path, "other")
    assert _problems(tmp_path, _listener(pair[0], other_key)) == [
        f"8:18: server.listen[0].tls.certificates[0].key: the key in '{other_key}' does not match the "
        f"certificate in '{pair[0]}'"]


def test_client_ca_must_be_readable_and_client_cert_needs_it(tmp_path: Path, pair: tuple[str, str]) -> None:
    missing = tmp_path / "clients.pem"
    assert _problems(tmp_path, _listener(*pair, f"client_ca: {missing}")) == [
        f"9:20: server.listen[0].tls.client_ca: cannot read certificate file '{missing}': "
        "No such file or directory"]
    assert _problems(tmp_path, _listener(*pair, "client_cert: required")) == [
        "6:9: server.listen[0].tls: client_cert: required needs client_ca, the CA bundle client "
        "certificates are verified against"]


def test_upstream_tls_files_and_settings_are_checked(tmp_path: Path, pair: tuple[str, str]) -> None:
    assert _problems(tmp_path, f"""
        version: 1
        upstreams:
          payments:
            targets: ["https://payments.internal:8443"]
            tls:
              ca: {tmp_path / 'nope.pem'}
              cert: {pair[0]}
              key: {pair[0]}
        """) == [
        f"6:11: upstreams.payments.tls.ca: cannot read certificate file '{tmp_path / 'nope.pem'}': "
        "No such file or directory",
        f"8:12: upstreams.payments.tls.key: '{pair[0]}' holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
    ]
    assert _problems(tmp_path, f"""
        version: 1
        upstreams:
          orders:
            targets: ["https://orders.internal:8443"]
            tls: {{cert: {pair[0]}}}
        """) == ["5:10: upstreams.orders.tls: cert and key go together: set both or neither"]


def test_plugins_reading_client_certificates_need_a_listener_that_asks_for_them(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """
        version: 1
        upstreams: {svc: {targets: ["http://127.0.0.1:9000"]}}
        routes:
          - name: a
            match: {paths: [/a]}
            to: svc
            plugins:
              mtls: {}
              allow: {subjects: ["CN=billing.internal"]}
        """)
    assert problems == [
        "8:13: routes[0].plugins.mtls: mtls needs a listener that asks for client certificates "
        "(server.listen[].tls.client_ca); without one no request ever has a certificate",
        "9:25: routes[0].plugins.allow.subjects: allow.subjects needs a listener that asks for client "
        "certificates (server.listen[].tls.client_ca); without one no request ever has a certificate",
    ]


def test_mtls_subjects_are_normalized_and_bad_or_duplicate_ones_are_reported(tmp_path: Path) -> None:
    loaded = _load(tmp_path, """
        version: 1
        consumers:
          - {name: billing, mtls_subjects: ["cn = billing.internal, o=Acme", "E=ops@acme.example,CN=ops"]}
        """)
    assert loaded.config.consumers[0].mtls_subjects == ["CN=billing.internal,O=Acme",
                                                         "emailAddress=ops@acme.example,CN=ops"]
    problems = _problems(tmp_path, """
        version: 1
        consumers:
          - {name: billing, mtls_subjects: ["CN=billing.internal,O=Acme"]}
          - {name: other, mtls_subjects: ["cn=billing.internal, O=Acme", "billing.internal"]}
        """)
    assert problems == [
        "4:66: consumers[1].mtls_subjects[1]: invalid subject 'billing.internal': 'billing.internal' is not "
        "TYPE=value (write it like CN=billing.internal,O=Acme)",
    ]
    problems = _problems(tmp_path, """
        version: 1
        consumers:
          - {name: billing, mtls_subjects: ["CN=billing.internal,O=Acme"]}
          - {name: other, mtls_subjects: ["cn=billing.internal, O=Acme"]}
        """)
    assert problems == [
        "4:35: consumers[1].mtls_subjects[0]: subject 'CN=billing.internal,O=Acme' already names consumer "
        "'billing'"]


def test_auth_any_accepts_mtls(tmp_path: Path, pair: tuple[str, str]) -> None:
    clients = CA().write(tmp_path, "clients")
    loaded = _load(tmp_path, _listener(*pair, f"client_ca: {clients}") + """
        upstreams: {svc: {targets: ["http://127.0.0.1:9000"]}}
        routes:
          - name: a
            match: {paths: [/a]}
            to: svc
            plugins: {mtls: {}, api_key: {}}
            auth_any: [mtls, api_key]
        """)
    assert loaded.config.routes[0].auth_any == ["mtls", "api_key"]


def test_subjects_from_certificates_and_configs_meet_in_one_form() -> None:
    from frontgate.tls.client_cert import client_certificate
    from frontgate.tls.subjects import normalize_subject

    issued = CA().issue("billing.internal", uris=("spiffe://acme/billing",), client=True, subject=[
        (NameOID.COUNTRY_NAME, "DE"), (NameOID.ORGANIZATION_NAME, "Acme, Inc."),
        (NameOID.COMMON_NAME, 'billing "eu"\nx')])
    cert = client_certificate(issued.cert.public_bytes(serialization.Encoding.DER))
    # Most specific first, RFC 4514 escapes, and no raw control character (it would split a header).
    assert cert.subject == 'CN=billing \\"eu\\"\\0Ax,O=Acme\\, Inc.,C=DE'
    assert normalize_subject('cn=billing \\"eu\\"\\0Ax, o=Acme\\, Inc., c=DE') == cert.subject
    assert cert.header_line.startswith(b"x-forwarded-client-cert: Hash=")
    assert b'Subject="CN=billing \\\\\\"eu\\\\\\"\\\\0Ax,O=Acme\\\\, Inc.,C=DE"' in cert.header_line
    assert cert.header_line.endswith(b";URI=spiffe://acme/billing;DNS=billing.internal\r\n")
    assert b"\n" not in cert.header_line[:-1]
