"""TLS parts for integration tests: a TLS client that keeps its connection open across requests, and a TLS
upstream server (optionally asking for the gateway's client certificate)."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
from cryptography import x509

from tests.certs import CA, Issued
from tests.integration.helpers import RecordingUpstream, Responder, echo, free_port, gateway_config


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclass
class _Collector:
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    done: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.setdefault(name.decode().lower(), []).append(value.decode("latin-1"))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def client_context(ca: CA, client: tuple[str, str] | None = None, *, minimum: ssl.TLSVersion | None = None,
                   maximum: ssl.TLSVersion | None = None, ciphers: str | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the tests look at which certificate came back themselves
    context.load_verify_locations(cadata=ca.cert_pem.decode())
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    context.set_alpn_protocols(alpn or ["h2", "http/1.1"])
    if client is not None:
        context.load_cert_chain(*client)
    return context


class TlsClient:
    """One TLS connection to 127.0.0.1:port; `request` sends keep-alive requests on it, one at a time."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=server_name)
        except BaseException:
            raw.close()
            raise
        self.server_name = server_name

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    @property
    def server_cert(self) -> x509.Certificate:
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def request(self, path: str = "/", headers: dict[str, str] | None = None, method: str = "GET") -> Response:
        host = self.server_name or "127.0.0.1"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n".encode())
        collector = _Collector()
        parser = httptools.HttpResponseParser(collector)
        while not collector.done:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the gateway closed the connection")
            parser.feed_data(data)
        return Response(parser.get_status_code(), collector.headers, collector.body)


def tls_get(port: int, context: ssl.SSLContext, path: str = "/", server_name: str | None = None,
            headers: dict[str, str] | None = None) -> Response:
    with TlsClient(port, context, server_name) as client:
        return client.request(path, headers)


class TlsUpstream(RecordingUpstream):
    """A RecordingUpstream behind TLS; with `client_ca` it requires a client certificate signed by it."""

    def __init__(self, server: Issued, directory: Path, client_ca: CA | None = None,
                 responder: Responder = echo) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*server.write(directory, f"upstream-{id(self)}"))
        if client_ca is not None:
            self.context.load_verify_locations(cadata=client_ca.cert_pem.decode())
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.peer_subjects: list[str | None] = []
        self.handshake_errors: list[str] = []
        super().__init__(responder)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            wrapped = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(str(exc))
            conn.close()
            return
        der = wrapped.getpeercert(binary_form=True)
        self.peer_subjects.append(x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None)
        super()._serve(wrapped)


def tls_gateway_config(tls: dict[str, Any], upstreams: dict[str, list[str]], routes: list[dict[str, Any]],
                       **sections: Any) -> dict[str, Any]:
    """A gateway config whose first listener is TLS with `tls` settings; a plain listener second."""
    config = gateway_config(free_port(), free_port(), upstreams, routes, **sections)
    config["server"]["listen"][0]["tls"] = tls
    config["server"]["listen"].append({"address": f"127.0.0.1:{free_port()}"})
    return config


def plain_port(config: dict[str, Any]) -> int:
    return int(config["server"]["listen"][1]["address"].rsplit(":", 1)[1])


def wait_for_log(gateway: Any, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs: str = gateway.logs()
        if text in logs:
            return logs
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the gateway's log:\n{gateway.logs()[-3000:]}")
