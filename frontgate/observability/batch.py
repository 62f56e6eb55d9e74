"""Per-request accounting: `observe()` copies what the accounting needs out of the finished exchange into a
`Record`, and every 100 ms, or every 256 requests, one loop counts the records (metrics) and
formats their access-log lines, which go to the writer thread as one block.

Why batches: measured on the request path (bench/hotpath.py), counting and formatting in a loop over many
records costs about half of what the same work costs at the end of each request, whose own code has by
then pushed the accounting code and data out of the CPU caches. Why a copy and not the exchange: keeping
the exchange alive until the batch would keep every object of the request out of the allocator's reuse
for that long, which cost more than it saved. Traces are decided at once (nothing is kept of an unsampled
request; sampled ones go to the exporter's queue).

Readers see exact numbers: /metrics, the dashboard and the workers' snapshot files flush first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final, final

from frontgate.observability.access_log import AccessLog
from frontgate.observability.metrics import RequestMetrics
from frontgate.observability.tracing import Tracer, incoming_trace_id

if TYPE_CHECKING:
    from frontgate.server.exchange import Exchange

log = logging.getLogger("frontgate.observability")

FLUSH_EVERY: Final = 0.1  # seconds a finished request may wait to be counted and logged
FLUSH_AT: Final = 256  # requests; a larger batch would pause the event loop for longer in one go


@final
class Record:
    """What the accounting needs of one finished request. Typed fields: in the compiled build (setup.py) the
    batch loops read them as C values, not through the tuple of objects this once was."""

    __slots__ = ("bytes_in", "bytes_out", "client_ip", "consumer", "grpc_status", "host", "limit", "method",
                 "now", "path", "request_id", "route", "started", "state", "status", "trace", "tries")

    def __init__(self, now: float, started: float, route: str | None, method: str, status: int,
                 tries: list[list[Any]] | None, bytes_in: int, bytes_out: int, grpc_status: int | None,
                 request_id: str | None, trace: object, client_ip: str, consumer: str | None, host: str, path: str,
                 state: dict[str, Any] | None, limit: Any) -> None:
        self.now = now  # monotonic seconds, as `started`
        self.started = started
        self.route = route  # the route's name, not the route: a batch must not keep an old config alive
        self.method = method
        self.status = status
        self.tries = tries  # `ctx.tries`
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.grpc_status = grpc_status
        self.request_id = request_id  # None: the request never needed one (the batch makes them in bulk)
        # `ctx.trace` with tracing on (trace_id_hex makes its id), else the trace id (str) of the request's
        # own traceparent, or None
        self.trace = trace
        self.client_ip = client_ip
        self.consumer = consumer
        self.host = host
        self.path = path
        self.state = state  # `ctx.state`: what plugins noted (cache, auth_failure)
        self.limit = limit  # `ctx.rate_limit`


class Observations:
    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: RequestMetrics | None, tracer: Tracer | None,
                 access_log: AccessLog) -> None:
        self._loop = loop
        self._metrics = metrics
        self._tracer = tracer
        self._access_log = access_log if access_log.enabled else None
        self._pending: list[Record] = []

    def add(self, exchange: Exchange) -> None:
        """At the end of each request: only copy what the batch needs (the request's cost is here)."""
        now = time.monotonic()
        ctx = exchange.ctx
        trace: object = ctx.trace
        if type(trace) is not bytes and self._tracer is not None:  # bytes: decided, not sampled
            self._tracer.finish(exchange, now)
            trace = ctx.trace
        if self._access_log is None and self._metrics is None:
            return  # tracing alone: nothing to batch
        if self._tracer is None:
            trace = incoming_trace_id(ctx.header_lines()) if self._access_log is not None and ctx.trace_context \
                else None
        route = exchange.route
        pending = self._pending
        pending.append(Record(
            now, ctx.started, route.name if route is not None else None, ctx.method, exchange.status, ctx.tries,
            exchange.body_bytes, exchange.bytes_out, exchange.grpc_status, ctx.request_id_made, trace,
            ctx.client_ip, ctx.consumer, ctx.host, ctx.path, ctx.state, ctx.rate_limit))
        if len(pending) == 1:
            self._loop.call_later(FLUSH_EVERY, self.flush)  # a spare call after a full batch flushes early
        elif len(pending) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        try:
            if self._access_log is not None:
                self._access_log.write(pending, self._metrics)  # counts them too: one loop
            elif self._metrics is not None:
                self._metrics.count(pending)
        except Exception:  # accounting must never break serving
            log.exception("could not account for %d requests", len(pending))
