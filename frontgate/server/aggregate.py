"""Aggregate routes (a backend for frontend): one request, several upstream calls in parallel, one JSON answer.

    aggregate:
      profile: {upstream: users, path: "/users/{jwt.sub}", required: true, timeout: 300ms}
      recs:    {upstream: recs,  path: "/recs/{jwt.sub}",  timeout: 200ms}     # optional: null on failure

After the route's plugins have run (auth first: `{jwt.sub}` needs the token's claims), every leg is a GET to
its upstream, through the same keep-alive pools, balancers, circuit breakers and outlier detection as proxied
requests, each bounded by its own `timeout` and by the route's. The answer is a JSON object with one key per
leg: the leg's JSON body. A leg fails when it cannot be sent (breaker open, no healthy target), times out,
answers other than 2xx, or answers something that is not JSON. A failed required leg fails the whole
request: 503 `{"error":"aggregate_unavailable","failed":[...]}`. A failed optional leg is `null`, and the
response says which in `Gateway-Partial: recs, ...`, so a client can tell a partial answer from a whole one.

Each leg carries the request's forwarded headers (what a proxied request would carry: `X-Forwarded-*`, the
request id, claims auth plugins forward), without its body: legs are GETs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from frontgate.config.schema import LEG_PLACEHOLDER, AggregateLeg
from frontgate.errors import HttpError, ServiceUnavailable
from frontgate.pipeline.context import Reply, RequestContext
from frontgate.upstream.cluster import UpstreamCluster

if TYPE_CHECKING:
    from frontgate.server.exchange import Exchange

log = logging.getLogger("frontgate.aggregate")

MAX_LEG_BODY = 8 * 1024 * 1024  # bytes one leg's answer may have; beyond, the leg fails
# Request headers a leg never inherits: framing and content negotiation are the leg's own (it must get JSON
# it can read, not a gzip body it would have to undo).
_NOT_INHERITED = (b"content-length:", b"transfer-encoding:", b"content-type:", b"accept-encoding:", b"expect:",
                  b"te:", b"upgrade:", b"host:", b"accept:")


class LegFailed(Exception):
    """Why a leg gave no value (for the log; the client sees only which legs failed)."""


@dataclass(frozen=True, slots=True)
class Leg:
    key: str
    cluster: UpstreamCluster
    path: str  # with `{...}` placeholders
    required: bool
    timeout: float | None


def compile_legs(legs: dict[str, AggregateLeg], clusters: dict[str, UpstreamCluster]) -> tuple[Leg, ...]:
    return tuple(Leg(key, clusters[leg.upstream], leg.path, leg.required, leg.timeout) for key, leg in legs.items())


def leg_path(template: str, ctx: RequestContext) -> str:
    """The leg's path with the request's values filled in, URL-encoded; LegFailed when one is missing."""
    query: dict[str, str] | None = None

    def value(name: str) -> str:
        nonlocal query
        found: Any = None
        if name == "consumer":
            found = ctx.consumer
        elif name.startswith("jwt."):
            found = ctx.claims
            for part in name[4:].split("."):
                found = found.get(part) if isinstance(found, dict) else None
        elif name.startswith("header."):
            raw = ctx.header(name[7:].lower().encode("ascii"))
            found = raw.decode("latin-1") if raw is not None else None
        elif name.startswith("query."):
            if query is None:
                query = dict(parse_qsl(ctx.query.decode("latin-1"), keep_blank_values=True))
            found = query.get(name[6:])
        if found is None or isinstance(found, (dict, list)):
            raise LegFailed(f"the request has no {{{name}}}")
        return quote(str(found), safe="")

    parts = LEG_PLACEHOLDER.split(template)  # text, name, text, name, ..., text
    return "".join(part if index % 2 == 0 else value(part) for index, part in enumerate(parts))


class _LegResponse:
    """Receives one leg's response from an upstream channel (the `ResponseReceiver` an exchange would be)."""

    grpc_status: int | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[bool] = loop.create_future()  # the result: may the channel be reused?
        self.status = 0
        self.parts: list[bytes] = []
        self.size = 0

    def response_head(self, status: int, lines: list[bytes], chunked: bool, content_length: int | None) -> None:
        self.status = status

    def response_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= MAX_LEG_BODY:
            self.parts.append(data)
        elif not self.done.done():
            self.done.set_exception(LegFailed(f"the answer is larger than {MAX_LEG_BODY} bytes"))

    def response_trailers(self, lines: list[bytes]) -> None:
        pass

    def response_complete(self, reusable: bool) -> None:
        if not self.done.done():
            self.done.set_result(reusable)

    def upstream_failed(self, error: HttpError, response_started: bool) -> None:
        if not self.done.done():
            self.done.set_exception(LegFailed(error.message))

    def upstream_write_paused(self, paused: bool) -> None:
        pass

    def flush(self) -> None:
        pass


async def fetch_leg(leg: Leg, path: str, header_lines: list[bytes], deadline: float) -> Any:
    """One leg: pick a target past the breakers, send the GET on a pooled connection, parse the JSON answer."""
    cluster = leg.cluster
    target = cluster.pick(None, ())
    if target is None:
        raise LegFailed("no healthy target, or every target's breaker is open")
    state = cluster.state
    if not state.breaker.allow(state.in_flight) or not target.state.breaker.allow(target.pool.in_flight):
        raise LegFailed("circuit open")
    loop = asyncio.get_running_loop()
    response = _LegResponse(loop)
    head = b"".join([b"GET ", path.encode("ascii"), b" HTTP/1.1\r\nhost: ", target.host_header,
                     b"\r\nx-request-deadline: %d\r\n" % max(0, int((deadline - loop.time()) * 1000)),
                     *header_lines, b"accept: application/json\r\n\r\n"])
    target.pool.in_flight += 1
    state.in_flight += 1
    ok = False
    channel = None
    try:
        async with asyncio.timeout_at(deadline):
            channel = target.pool.take_idle() or await target.pool.connect()
            channel.start(response, head, False, False)
            reusable = await response.done
        target.pool.release(channel, reusable)
        channel = None
        if not 200 <= response.status < 300:
            raise LegFailed(f"the upstream answered {response.status}")
        try:
            value = json.loads(b"".join(response.parts) or b"null")
        except (ValueError, RecursionError):
            raise LegFailed("the answer is not JSON (or nested too deeply)") from None
        ok = True
        return value
    except TimeoutError:
        raise LegFailed("timed out") from None
    except HttpError as error:  # could not connect
        raise LegFailed(error.message) from None
    finally:
        if channel is not None:  # timed out, cancelled or failed mid-response: the connection is spoiled
            channel.detach()
        cluster.try_ended(target, ok)


async def aggregate(exchange: Exchange, legs: tuple[Leg, ...], deadline: float) -> None:
    """Run every leg in parallel and answer the exchange with the combined JSON (or the 503)."""
    ctx = exchange.ctx
    header_lines = [line for line in ctx.header_lines() if not line.startswith(_NOT_INHERITED)]
    loop = asyncio.get_running_loop()

    async def run(leg: Leg) -> Any:
        leg_deadline = deadline if leg.timeout is None else min(deadline, loop.time() + leg.timeout)
        started = time.monotonic()
        try:
            return await fetch_leg(leg, leg_path(leg.path, ctx), header_lines, leg_deadline)
        except LegFailed as failure:
            log.info("aggregate route %s: leg %s failed after %.0f ms: %s", exchange.route.name if exchange.route
                     else "?", leg.key, (time.monotonic() - started) * 1000, failure)
            raise

    results = await asyncio.gather(*(run(leg) for leg in legs), return_exceptions=True)
    if exchange.finished:
        return
    failed = [leg for leg, result in zip(legs, results, strict=True) if isinstance(result, BaseException)]
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, LegFailed):
            if isinstance(result, asyncio.CancelledError):
                raise result
            log.error("aggregate leg failed unexpectedly", exc_info=result)
    required = [leg.key for leg in failed if leg.required]
    if required:
        error = AggregateUnavailable()
        body = json.dumps({"error": error.code, "message": error.message, "failed": required,
                           "request_id": ctx.request_id}, separators=(",", ":")).encode()
        exchange.send_reply(Reply(error.status, body))
        return
    combined = {leg.key: None if isinstance(result, BaseException) else result
                for leg, result in zip(legs, results, strict=True)}
    headers = [(b"gateway-partial", ", ".join(leg.key for leg in failed).encode())] if failed else []
    exchange.send_reply(Reply(200, json.dumps(combined, separators=(",", ":")).encode(), headers))


class AggregateUnavailable(ServiceUnavailable):
    code = "aggregate_unavailable"
    message = "A part of this response that it cannot do without is unavailable."
