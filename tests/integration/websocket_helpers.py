"""Real WebSocket parts for integration tests: a `websockets` server on a thread as the upstream, a
`websockets` client, and raw frames for what a well-behaved library would never send.

Everything listens on 127.0.0.1 with ports the OS hands out; every wait is bounded.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Server, ServerConnection, serve

Handler = Callable[[ServerConnection], None]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11526"  # RFC 6455 §1.3


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


class WebSocketUpstream:
    """A real `websockets` server: records each handshake it accepted and the close code each connection
    ended with (None: the TCP connection ended without a Close frame)."""

    def __init__(self, handler: Handler = echo, **options: Any) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.close_codes: list[int | None] = []
        self.ended = threading.Event()  # set each time a connection's handler is done
        options.setdefault("ping_interval", None)  # no keep-alive traffic unless a test sends it
        options.setdefault("close_timeout", 2)
        self.server: Server = serve(self._handle, "127.0.0.1", 0, **options)
        self.port = int(self.server.socket.getsockname()[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.requests.append(ws.request)
        try:
            self.handler(ws)
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            self.ended.set()

    def wait_ended(self, count: int = 1, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.close_codes) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.close_codes)} upstream connections ended, expected {count}")
            self.ended.wait(0.05)
            self.ended.clear()

    def close(self) -> None:
        self.server.shutdown()
        self._thread.join(5)


def ws_connect(port: int, path: str = "/chat", **options: Any) -> ClientConnection:
    """A real client through the gateway. No proxy from the environment, no pings unless asked."""
    options.setdefault("ping_interval", None)
    options.setdefault("open_timeout", 5)
    options.setdefault("close_timeout", 2)
    return connect(f"ws://127.0.0.1:{port}{path}", proxy=None, **options)


# --- raw bytes, for what a library would never send -----------------------------------------------------


def handshake_request(path: str = "/chat", extra: str = "") -> tuple[bytes, bytes]:
    """A client handshake and the Sec-WebSocket-Accept the server must answer with."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()
    return head, accept


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked frame, as a client sends it."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_head(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Read a response head; returns it and whatever came after it."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_server_frame(sock: socket.socket, buffered: bytes = b"", timeout: float = 5.0) -> tuple[int, bytes, bytes]:
    """One unmasked frame from the server: (opcode, payload, bytes left over)."""
    sock.settimeout(timeout)
    data = buffered

    def need(count: int) -> None:
        nonlocal data
        while len(data) < count:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a whole frame")
            data += chunk

    need(2)
    opcode, length = data[0] & 0x0F, data[1] & 0x7F
    offset = 2
    if length == 126:
        need(4)
        length, offset = struct.unpack("!H", data[2:4])[0], 4
    elif length == 127:
        need(10)
        length, offset = struct.unpack("!Q", data[2:10])[0], 10
    need(offset + length)
    return opcode, data[offset : offset + length], data[offset + length :]


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files: good for both ends of a TLS test."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
