"""Real parts for integration tests: a gateway subprocess, a recording upstream, raw client sockets.

Everything listens on 127.0.0.1 with ports the OS hands out, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

# Ports for servers the tests start, below the range the kernel takes outgoing connections' ports from
# (32768-60999 on Linux): a port the kernel picked for us there could be taken by some test's connection
# between the pick and the server's bind.
_PORTS = range(20000, 32000)


def free_port() -> int:
    for _ in range(200):
        port = random.choice(_PORTS)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    with socket.socket() as sock:  # all tried were taken: whatever the kernel gives
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None,
                  log_path: Path | None = None) -> None:
    """Wait until something listens on `port`; with `process`, fail at once (with its log) if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if process is not None and process.poll() is not None:
            log = log_path.read_text(errors="replace")[-3000:] if log_path is not None else ""
            raise RuntimeError(f"the gateway exited with {process.returncode} before listening on {port}:\n{log}")
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


# --- the upstream side ----------------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]  # as received, names lowercased
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


Responder = Callable[[ReceivedRequest, socket.socket], bytes | None]


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(payload).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def echo(request: ReceivedRequest, sock: socket.socket) -> bytes:
    return json_response(200, {"method": request.method, "target": request.target, "headers": request.headers,
                               "body_length": len(request.body)})


class _RequestCollector:
    def __init__(self) -> None:
        self.done: list[ReceivedRequest] = []
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append(ReceivedRequest("", self.url.decode("latin-1"), self.headers, bytes(self.body), b""))
        self._reset()


class RecordingUpstream:
    """A real HTTP/1.1 server on a thread that records every request it parses (in order) and answers
    with `responder` (raw bytes; None closes the connection without answering)."""

    def __init__(self, responder: Responder = echo) -> None:
        self.responder = responder
        self.requests: list[ReceivedRequest] = []
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = int(self._sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        collector = _RequestCollector()
        parser = httptools.HttpRequestParser(collector)
        conn.settimeout(30)
        with conn:
            while not self._stop:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                upgraded = False
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    upgraded = True  # after this request the socket is the responder's (a WebSocket, say)
                except httptools.HttpParserError:
                    return
                while collector.done:
                    request = collector.done.pop(0)
                    request.method = parser.get_method().decode()
                    self.requests.append(request)
                    answer = self.responder(request, conn)
                    if answer is None:
                        return
                    try:
                        conn.sendall(answer)
                    except OSError:
                        return
                if upgraded:
                    return

    def close(self) -> None:
        self._stop = True
        self._sock.close()


# --- the gateway --------------------------------------------------------------------------------------


@dataclass
class RunningGateway:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    config_path: Path
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict[str, Any]]:
        lines = [line for line in self.logs().splitlines() if line.startswith("{")]
        return [json.loads(line) for line in lines]

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise


def gateway_config(port: int, admin_port: int, upstreams: dict[str, list[str]], routes: list[dict[str, Any]],
                   **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 1,
        "server": {"listen": [{"address": f"127.0.0.1:{port}"}], "timeouts": {"drain": "5s"}},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "upstreams": {name: {"targets": targets} for name, targets in upstreams.items()},
        "routes": routes,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@contextlib.contextmanager
def run_gateway(tmp_path: Path, config: dict[str, Any], workers: int = 1,
                env: dict[str, str] | None = None) -> Iterator[RunningGateway]:
    port = int(config["server"]["listen"][0]["address"].rsplit(":", 1)[1])
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1]) if config.get("admin") else 0
    config_path = tmp_path / "frontgate.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML 1.2
    log_path = tmp_path / f"gateway-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "frontgate", "run", "-c", str(config_path), "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    gateway = RunningGateway(process, port, admin_port, config_path, log_path)
    try:
        wait_for_port(port, process=process, log_path=log_path)
        if admin_port:
            wait_for_port(admin_port, process=process, log_path=log_path)
        yield gateway
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes, read until the gateway closes (or `timeout`), return everything received."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0
