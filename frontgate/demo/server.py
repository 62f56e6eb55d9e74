"""A small, strict-enough HTTP/1.1 server for the demo services: asyncio.Protocol + httptools.

It does keep-alive, pipelining (answered in order), Content-Length and chunked request bodies (decoded by
httptools, hashed whole, kept up to 1 MiB), `Expect: 100-continue`, HEAD, chunked streamed responses
with write back-pressure, and an idle timeout. An `App` turns a `Request` into a `Response`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl

import httptools

log = logging.getLogger("frontgate.demo")

BODY_KEPT = 1024 * 1024  # bodies are hashed whole but only this much is kept for JSON endpoints
_MAX_PIPELINED = 16  # parsed requests waiting for an answer before we stop reading the socket
# Longer than the gateway's default upstream pool idle_timeout (60s), so the gateway closes idle
# connections first and never reuses one we are closing at the same moment.
_IDLE_TIMEOUT = 75.0


# --- requests and responses ---------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    method: str
    target: str  # raw request target, exactly as received
    headers: list[tuple[str, str]]  # names as sent (case kept), in order
    body: bytes  # the first BODY_KEPT bytes
    body_length: int
    body_sha256: str
    chunked: bool
    http_version: str
    keep_alive: bool
    peer: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def args(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncGenerator[bytes, None] | None = None  # sent chunked when set


def json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    # Compact, so the C encoder runs (indent= falls back to pure Python); `| jq` makes it pretty.
    body = json.dumps(payload, ensure_ascii=False).encode() + b"\n"
    return Response(status, body, [("Content-Type", "application/json"), *headers])


def error(status: int, message: str) -> Response:
    return json_response(status, {"error": HTTPStatus(status).phrase.lower().replace(" ", "_"),
                                  "message": message})


class App(Protocol):
    """What the server runs: a name for the `X-Served-By` header, a `Server` header, and a handler."""

    name: str
    server_header: str

    async def handle(self, request: Request) -> Response: ...


# --- the HTTP/1.1 server ------------------------------------------------------------------------------

_date_cache: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:  # formatted once a second, not per response
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


class _Connection(asyncio.Protocol):
    """One client connection: httptools parses, a single task answers requests in order."""

    def __init__(self, app: App, connections: set[_Connection]) -> None:
        self.app = app
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.pending: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.reading_paused = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.idle_timer: asyncio.TimerHandle | None = None
        self._reset_message()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they implement its interface.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        self.writable.set()  # wake a writer waiting for drain; it will see `closed`
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # We do not speak the upgraded protocol: answer what was parsed, then close.
            if self.pending:
                self.pending[-1].keep_alive = False
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed request: {exc}")

    # -- httptools callbacks --

    def _reset_message(self) -> None:
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.digest = hashlib.sha256()
        self.body = bytearray()
        self.body_length = 0

    def on_message_begin(self) -> None:
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        expect = any(k.lower() == b"expect" and v.lower() == b"100-continue" for k, v in self.raw_headers)
        # Only when idle: a 100 written between another response's bytes would corrupt it.
        if expect and self.task is None and not self.pending and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.digest.update(body)
        self.body_length += len(body)
        if len(self.body) < BODY_KEPT:
            self.body += body[: BODY_KEPT - len(self.body)]

    def on_message_complete(self) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers]
        chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers)
        self.pending.append(Request(
            method=self.parser.get_method().decode("ascii"),
            target=self.url.decode("latin-1"),
            headers=headers,
            body=bytes(self.body),
            body_length=self.body_length,
            body_sha256=self.digest.hexdigest(),
            chunked=chunked,
            http_version=self.parser.get_http_version(),
            keep_alive=self.parser.should_keep_alive(),
            peer=self.peer,
        ))
        if len(self.pending) >= _MAX_PIPELINED and self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()  # a client pipelining without reading answers must wait
            self.reading_paused = True
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._answer_pending())

    # -- answering --

    async def _answer_pending(self) -> None:
        try:
            while self.pending and not self.closed:
                request = self.pending.popleft()
                if self.reading_paused and len(self.pending) < _MAX_PIPELINED // 2 and self.transport:
                    self.transport.resume_reading()
                    self.reading_paused = False
                try:
                    response = await self.app.handle(request)
                except Exception:
                    log.exception("%s: handler failed for %s %s", self.app.name, request.method, request.target)
                    response = error(500, "the demo service failed")
                await self._send(request, response)
                if not request.keep_alive:
                    self.close()
                    return
        except ConnectionError:
            self.close()
        finally:
            self.task = None
        if not self.closed:
            self._arm_idle_timer()

    async def _send(self, request: Request, response: Response) -> None:
        assert self.transport is not None
        status = response.status
        no_body = request.method == "HEAD" or status in (204, 304)
        headers = [("Server", self.app.server_header), ("X-Served-By", self.app.name),
                   *response.headers]
        stream = response.stream
        if stream is None:
            if status not in (204, 304):
                headers.append(("Content-Length", str(len(response.body))))
        elif request.http_version == "1.1":
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            request.keep_alive = False  # HTTP/1.0 has no chunked coding: the close ends the body
        if not request.keep_alive:
            headers.append(("Connection", "close"))
        elif request.http_version == "1.0":
            headers.append(("Connection", "keep-alive"))
        head = _head(status, headers)
        if stream is None:
            self.transport.write(head if no_body else head + response.body)
            return
        if no_body:
            self.transport.write(head)
            await stream.aclose()
            return
        await self._send_stream(head, stream, chunked=request.http_version == "1.1")

    async def _send_stream(self, head: bytes, stream: AsyncGenerator[bytes, None], chunked: bool) -> None:
        assert self.transport is not None
        self.transport.write(head)
        try:
            async for data in stream:
                if self.closed:
                    raise ConnectionError("client went away")
                if data:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
                await self.writable.wait()  # back-pressure: wait while the transport buffer is full
            if chunked and not self.closed:
                self.transport.write(b"0\r\n\r\n")
        finally:
            await stream.aclose()

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None and self.task is None and not self.pending:
            response = error(status, message)
            headers = [("Server", self.app.server_header), *response.headers,
                       ("Content-Length", str(len(response.body))), ("Connection", "close")]
            self.transport.write(_head(status, headers) + response.body)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = asyncio.get_running_loop().call_later(_IDLE_TIMEOUT, self.close)


def _head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
    lines.append(b"Date: " + _date_header() + b"\r\n")
    lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers]
    lines.append(b"\r\n")
    return b"".join(lines)  # one write for the whole head


# --- starting and stopping ----------------------------------------------------------------------------

# Open connections per server, so `stop_server` can close keep-alive connections too.
_OPEN: dict[int, set[_Connection]] = {}


async def start_server(app: App, host: str, port: int) -> tuple[asyncio.Server, int]:
    connections: set[_Connection] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: _Connection(app, connections), host, port, backlog=1024
    )
    _OPEN[id(server)] = connections
    return server, int(server.sockets[0].getsockname()[1])


async def stop_server(server: asyncio.Server) -> None:
    """Stop listening and close every open connection (keep-alive ones included)."""
    server.close()
    for connection in list(_OPEN.pop(id(server), ())):
        connection.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)
