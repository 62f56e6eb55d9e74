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

The HTTP/1.1 side (keep-alive, pipelining, chunked bodies, HEAD, back-pressure) is in server.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
import signal
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import uvloop

from frontgate.demo.server import Request, Response, error, json_response, start_server, stop_server

log = logging.getLogger("frontgate.demo")

KINDS = ("orders", "payments", "catalog", "users", "recs")
# The instances `frontgate demo` runs: a canary pair for orders and a dedicated tenant for payments.
DEMO_INSTANCES = ("orders-v1", "orders-v2", "payments", "payments-acme", "catalog", "users", "recs")

_ECHO_TEXT_MAX = 64 * 1024


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

# --- starting and stopping ----------------------------------------------------------------------------


async def start_service(name: str, host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, int]:
    """Start the demo service `name` (e.g. `orders` or `orders-v2`); return the server and its port."""
    server, bound = await start_server(Service(name), host, port)
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
    await stop_server(server)


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
