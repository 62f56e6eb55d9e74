"""Sample HTTP/1.1 services for `frontgate demo` and the integration tests (stdlib asyncio + httptools).

Services: orders, payments, catalog, users, recs. An instance name may carry a tag (`orders-v2`,
`payments-acme`): it runs the same service but names itself differently, so a client can tell which
instance answered (`Server: frontgate-demo-<name>`, `X-Served-By` and `served_by` in JSON bodies).

Every instance also answers:

- `/_echo...` and `/echo...` (any method): JSON describing the request exactly as received: `method`,
  `target` (raw request target), `path` (its raw path part), `query` (raw query string), `args` (parsed),
  `headers` (`[name, value]` pairs, names as sent), `body_length`, `body_sha256`, `body` (text when short
  UTF-8, else null), `chunked`, `http_version`, `service` and `peer` (`host:port`);
- `/_status/{code}`: that status; `/_slow?ms=N`: waits, then answers; `/_bytes?n=N`: N bytes, chunked;
- `/healthz`.

The server does keep-alive, pipelining, Content-Length and chunked request bodies (decoded by httptools),
`Expect: 100-continue`, HEAD, and write back-pressure for streamed responses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import hashlib
import itertools
import json
import logging
import re
import signal
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools
import uvloop

log = logging.getLogger("frontgate.demo")

KINDS = ("orders", "payments", "catalog", "users", "recs")
# The instances `frontgate demo` runs: a canary pair for orders and a dedicated tenant for payments.
DEMO_INSTANCES = ("orders-v1", "orders-v2", "payments", "payments-acme", "catalog", "users", "recs")

_BODY_KEPT = 1024 * 1024  # bodies are hashed whole but only this much is kept for JSON endpoints
_MAX_PIPELINED = 16  # parsed requests waiting for an answer before we stop reading the socket
# Longer than the gateway's default upstream pool idle_timeout (60s), so the gateway closes idle
# connections first and never reuses one we are closing at the same moment.
_IDLE_TIMEOUT = 75.0
_ECHO_TEXT_MAX = 64 * 1024


# --- requests and responses ---------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    method: str
    target: str  # raw request target, exactly as received
    headers: list[tuple[str, str]]  # names as sent (case kept), in order
    body: bytes  # the first _BODY_KEPT bytes
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


Handler = Callable[[Request, re.Match[str]], Awaitable[Response]]


# --- the services -------------------------------------------------------------------------------------


class Service:
    """One instance: a name, and (methods, path regex, handler) routes tried in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.kind = _kind_of(name)
        self.server_header = f"frontgate-demo-{name}"
        self._ids = itertools.count(1001 + len(_ORDERS) if self.kind == "orders" else 1)
        self._payments: dict[str, dict[str, Any]] = {}
        self.routes: list[tuple[frozenset[str], re.Pattern[str], Handler]] = []
        self._add(None, r"/_?echo.*", self._echo)
        self._add({"GET", "HEAD", "POST"}, r"/_status/(\d{3})", self._status)
        self._add({"GET", "HEAD", "POST"}, r"/_slow", self._slow)
        self._add({"GET", "HEAD"}, r"/_bytes", self._bytes)
        self._add({"GET", "HEAD"}, r"/healthz", self._health)
        getattr(self, f"_routes_{self.kind}")()

    def _add(self, methods: set[str] | None, pattern: str, handler: Handler) -> None:
        self.routes.append((frozenset(methods or ()), re.compile(pattern), handler))

    async def handle(self, request: Request) -> Response:
        path = request.path
        allowed: set[str] = set()
        for methods, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if not methods or request.method in methods:
                return await handler(request, match)
            allowed |= methods
        if allowed:
            response = error(405, f"{request.method} is not allowed on {path}")
            response.headers.append(("Allow", ", ".join(sorted(allowed))))
            return response
        return error(404, f"{self.name} has nothing at {path}")

    def _json(self, status: int, payload: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> Response:
        return json_response(status, {**payload, "served_by": self.name}, headers)

    # -- common endpoints --

    async def _echo(self, request: Request, match: re.Match[str]) -> Response:
        text: str | None = None
        if request.body_length <= _ECHO_TEXT_MAX:
            with contextlib.suppress(UnicodeDecodeError):
                text = request.body.decode()
        return json_response(200, {
            "service": self.name,
            "method": request.method,
            "target": request.target,
            "path": request.path,
            "query": request.query,
            "args": request.args,
            "headers": [[k, v] for k, v in request.headers],
            "body_length": request.body_length,
            "body_sha256": request.body_sha256,
            "body": text,
            "chunked": request.chunked,
            "http_version": request.http_version,
            "peer": request.peer,
        })

    async def _status(self, request: Request, match: re.Match[str]) -> Response:
        code = int(match.group(1))
        if not 200 <= code <= 599:
            return error(400, "status must be between 200 and 599")
        if code in (204, 304):
            return Response(code)
        return json_response(code, {"status": code, "served_by": self.name})

    async def _slow(self, request: Request, match: re.Match[str]) -> Response:
        ms = _int_arg(request, "ms", 1000, 0, 600_000)
        await asyncio.sleep(ms / 1000)
        return self._json(200, {"slept_ms": ms})

    async def _bytes(self, request: Request, match: re.Match[str]) -> Response:
        total = _int_arg(request, "n", 1024, 0, 1 << 34)
        chunk = _int_arg(request, "chunk", 16 * 1024, 1, 1 << 20)
        return Response(200, headers=[("Content-Type", "application/octet-stream")],
                        stream=_pattern_bytes(total, chunk))

    async def _health(self, request: Request, match: re.Match[str]) -> Response:
        return self._json(200, {"status": "ok"})

    # -- orders --

    def _routes_orders(self) -> None:
        self._add({"GET", "HEAD", "POST"}, r"/orders/?", self._orders)
        self._add({"GET", "HEAD"}, r"/orders/([^/]+)", self._order)

    async def _orders(self, request: Request, match: re.Match[str]) -> Response:
        if request.method == "POST":
            payload = _json_body(request)
            if not isinstance(payload, dict):
                return error(400, 'send a JSON object, e.g. {"sku": "book-42", "qty": 1}')
            order_id = str(next(self._ids))
            created = {**payload, "id": order_id, "status": "created"}
            return self._json(201, created, [("Location", f"/orders/{order_id}")])
        args = request.args
        orders = [o for o in _ORDERS if args.get("user") in (None, o["user"])]
        orders = orders[: _int_arg(request, "limit", len(orders), 0, len(orders))]
        return self._json(200, {"orders": orders})

    async def _order(self, request: Request, match: re.Match[str]) -> Response:
        order = next((o for o in _ORDERS if o["id"] == match.group(1)), None)
        if order is None:
            return error(404, f"no order {match.group(1)}")
        return self._json(200, order)

    # -- payments --

    def _routes_payments(self) -> None:
        self._add({"GET", "HEAD", "POST"}, r"/payments/?", self._payments_root)
        self._add({"GET", "HEAD"}, r"/payments/([^/]+)", self._payment)

    async def _payments_root(self, request: Request, match: re.Match[str]) -> Response:
        if request.method != "POST":
            return self._json(200, {"payments": list(self._payments.values())})
        payload = _json_body(request)
        amount = payload.get("amount") if isinstance(payload, dict) else None
        if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
            return error(400, 'send a JSON object with a positive amount, e.g. {"amount": 12.5}')
        payment_id = f"pay_{next(self._ids)}"
        payment = {"id": payment_id, "amount": amount, "currency": str(payload.get("currency", "EUR")),
                   "status": "authorized", "tenant": request.header("x-tenant")}
        self._payments[payment_id] = payment
        return self._json(201, payment, [("Location", f"/payments/{payment_id}")])

    async def _payment(self, request: Request, match: re.Match[str]) -> Response:
        payment = self._payments.get(match.group(1))
        if payment is None:
            return error(404, f"no payment {match.group(1)}")
        return self._json(200, payment)

    # -- catalog --

    def _routes_catalog(self) -> None:
        self._add({"GET", "HEAD"}, r"/catalog/?", self._catalog)
        self._add({"GET", "HEAD"}, r"/catalog/([^/]+)", self._catalog_item)

    async def _catalog(self, request: Request, match: re.Match[str]) -> Response:
        lang = _language(request.header("accept-language"))
        items = [_localised(sku, lang) for sku in _CATALOG]
        return self._json(200, {"language": lang, "items": items}, _catalog_headers(lang))

    async def _catalog_item(self, request: Request, match: re.Match[str]) -> Response:
        sku = match.group(1)
        if sku not in _CATALOG:
            return error(404, f"no product {sku}")
        lang = _language(request.header("accept-language"))
        return self._json(200, _localised(sku, lang), _catalog_headers(lang))

    # -- users --

    def _routes_users(self) -> None:
        self._add({"GET", "HEAD"}, r"/users/?", self._users)
        self._add({"GET", "HEAD"}, r"/users/([^/]+)", self._user)

    async def _users(self, request: Request, match: re.Match[str]) -> Response:
        return self._json(200, {"users": list(_USERS.values())})

    async def _user(self, request: Request, match: re.Match[str]) -> Response:
        user = _USERS.get(match.group(1))
        if user is None:
            return error(404, f"no user {match.group(1)}")
        return self._json(200, user)

    # -- recs --

    def _routes_recs(self) -> None:
        self._add({"GET", "HEAD"}, r"/recs/stream", self._recs_stream)
        self._add({"GET", "HEAD"}, r"/recs/([^/]+)", self._recs)

    async def _recs(self, request: Request, match: re.Match[str]) -> Response:
        user = match.group(1)
        return self._json(200, {"user": user, "items": _recommend(user, 3)})

    async def _recs_stream(self, request: Request, match: re.Match[str]) -> Response:
        count = _int_arg(request, "n", 5, 1, 1000)
        interval = _int_arg(request, "interval_ms", 200, 0, 60_000) / 1000
        user = request.args.get("user", "guest")
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        return Response(200, headers=headers, stream=_sse_events(user, count, interval, self.name))


# --- data ---------------------------------------------------------------------------------------------

_ORDERS: list[dict[str, Any]] = [
    {"id": "1001", "user": "alice", "items": [{"sku": "book-42", "qty": 1}], "total": 18.5, "status": "shipped"},
    {"id": "1002", "user": "bob", "items": [{"sku": "mug-7", "qty": 2}], "total": 24.0, "status": "paid"},
    {"id": "1003", "user": "alice", "items": [{"sku": "lamp-3", "qty": 1}], "total": 49.9, "status": "created"},
]

_CATALOG: dict[str, dict[str, Any]] = {
    "book-42": {"price": 18.5, "name": {"en": "The Hitchhiker's Guide", "fr": "Le Guide du voyageur galactique"}},
    "mug-7": {"price": 12.0, "name": {"en": "Coffee mug", "fr": "Tasse à café"}},
    "lamp-3": {"price": 49.9, "name": {"en": "Desk lamp", "fr": "Lampe de bureau"}},
    "chair-9": {"price": 129.0, "name": {"en": "Office chair", "fr": "Chaise de bureau"}},
}

_USERS: dict[str, dict[str, Any]] = {
    "alice": {"id": "alice", "name": "Alice Martin", "email": "alice@example.com", "tier": "gold"},
    "bob": {"id": "bob", "name": "Bob Dupont", "email": "bob@example.com", "tier": "silver"},
    "carol": {"id": "carol", "name": "Carol Smith", "email": "carol@example.com", "tier": "bronze"},
}


def _kind_of(name: str) -> str:
    if name in KINDS:
        return name
    base = name.rsplit("-", 1)[0]
    if base in KINDS:
        return base
    raise ValueError(f"unknown demo service {name!r}: expected one of {', '.join(KINDS)} (optionally -TAG)")


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        value = default
    return max(low, min(high, value))


def _json_body(request: Request) -> Any:
    if request.body_length > len(request.body):
        return None
    try:
        return json.loads(request.body or b"null")
    except ValueError:
        return None


def _language(accept_language: str | None) -> str:
    """The best of en / fr by q-value (RFC 9110 §12.5.4); en when nothing fits."""
    best, best_q = "en", 0.0
    for item in (accept_language or "").split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            with contextlib.suppress(ValueError):
                q = float(params.strip()[2:])
        lang = tag.strip().lower().split("-")[0]
        if lang in ("en", "fr") and q > best_q:
            best, best_q = lang, q
    return best


def _localised(sku: str, lang: str) -> dict[str, Any]:
    item = _CATALOG[sku]
    return {"sku": sku, "name": item["name"][lang], "price": item["price"], "currency": "EUR"}


def _catalog_headers(lang: str) -> list[tuple[str, str]]:
    return [("Cache-Control", "max-age=30"), ("Vary", "Accept-Language"), ("Content-Language", lang)]


def _recommend(user: str, count: int) -> list[str]:
    # Deterministic per user, so repeated calls (and tests) agree.
    skus = sorted(_CATALOG)
    start = int(hashlib.sha256(user.encode()).hexdigest(), 16) % len(skus)
    return [skus[(start + i) % len(skus)] for i in range(min(count, len(skus)))]


async def _sse_events(user: str, count: int, interval: float, name: str) -> AsyncGenerator[bytes, None]:
    skus = _recommend(user, len(_CATALOG))
    for n in range(1, count + 1):
        if n > 1:
            await asyncio.sleep(interval)
        data = json.dumps({"n": n, "user": user, "sku": skus[(n - 1) % len(skus)], "served_by": name})
        yield f"id: {n}\nevent: rec\ndata: {data}\n\n".encode()


async def _pattern_bytes(total: int, chunk: int) -> AsyncGenerator[bytes, None]:
    # A repeating 0-9a-z pattern: the receiver can check the bytes, not only the count.
    block = b"0123456789abcdefghijklmnopqrstuvwxyz" * (chunk // 36 + 2)
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        offset = sent % 36  # keep the pattern continuous across chunks
        yield block[offset : offset + size]
        sent += size


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

    def __init__(self, service: Service, connections: set[_Connection]) -> None:
        self.service = service
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
        if len(self.body) < _BODY_KEPT:
            self.body += body[: _BODY_KEPT - len(self.body)]

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
                    response = await self.service.handle(request)
                except Exception:
                    log.exception("%s: handler failed for %s %s", self.service.name, request.method, request.target)
                    response = error(500, "the demo service failed")
                await self._send(request, response)
                if not request.keep_alive:
                    self._close()
                    return
        except ConnectionError:
            self._close()
        finally:
            self.task = None
        if not self.closed:
            self._arm_idle_timer()

    async def _send(self, request: Request, response: Response) -> None:
        assert self.transport is not None
        status = response.status
        no_body = request.method == "HEAD" or status in (204, 304)
        headers = [("Server", self.service.server_header), ("X-Served-By", self.service.name),
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
            headers = [("Server", self.service.server_header), *response.headers,
                       ("Content-Length", str(len(response.body))), ("Connection", "close")]
            self.transport.write(_head(status, headers) + response.body)
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = asyncio.get_running_loop().call_later(_IDLE_TIMEOUT, self._close)


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

# Open connections per server, so `stop_service` can close keep-alive connections too.
_OPEN: dict[int, set[_Connection]] = {}


async def start_service(name: str, host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, int]:
    """Start the demo service `name` (e.g. `orders` or `orders-v2`); return the server and its port."""
    service = Service(name)
    connections: set[_Connection] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: _Connection(service, connections), host, port, backlog=1024
    )
    _OPEN[id(server)] = connections
    bound = int(server.sockets[0].getsockname()[1])
    log.debug("demo service %s listening on %s:%d", name, host, bound)
    return server, bound


async def start_all(
    host: str = "127.0.0.1", names: Sequence[str] = DEMO_INSTANCES
) -> dict[str, tuple[asyncio.Server, int]]:
    """Start every instance in `names` on a free port each."""
    started: dict[str, tuple[asyncio.Server, int]] = {}
    try:
        for name in names:
            started[name] = await start_service(name, host)
    except BaseException:
        await stop_all(server for server, _ in started.values())
        raise
    return started


async def stop_service(server: asyncio.Server) -> None:
    """Stop listening and close every open connection (keep-alive ones included)."""
    server.close()
    for connection in list(_OPEN.pop(id(server), ())):
        connection._close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)


async def stop_all(servers: Iterable[asyncio.Server]) -> None:
    for server in list(servers):
        await stop_service(server)


# --- command line -------------------------------------------------------------------------------------


async def _serve_forever(name: str, host: str, port: int) -> None:
    server, bound = await start_service(name, host, port)
    print(f"demo service {name} listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stop_service(server)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontgate.demo.services",
                                     description="Run one frontgate demo service.")
    parser.add_argument("name", help=f"one of {', '.join(KINDS)}, optionally tagged: orders-v2")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = parser.parse_args(argv)
    try:
        _kind_of(args.name)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        uvloop.run(_serve_forever(args.name, args.host, args.port))
    except OSError as exc:
        print(f"cannot start {args.name}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
