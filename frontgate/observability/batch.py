"""Per-request accounting: `observe()` copies what the accounting needs out of the finished exchange into one
tuple (a `Record`), and every 100 ms, or every 256 requests, one loop counts the records (metrics) and
formats their access-log lines, which go to the writer thread as one block.

Why batches: measured on the request path (bench/hotpath.py), counting and formatting in a loop over many
records costs about half of what the same work costs at the end of each request, whose own code has by
then pushed the accounting code and data out of the CPU caches. Why a tuple and not the exchange: keeping
the exchange alive until the batch would keep every object of the request out of the allocator's reuse
for that long, which cost more than it saved. Traces are decided at once (the tuple for an unsampled
request is never made; sampled ones go to the exporter's queue).

Readers see exact numbers: /metrics, the dashboard and the workers' snapshot files flush first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from frontgate.observability.access_log import AccessLog
from frontgate.observability.metrics import RequestMetrics
from frontgate.observability.tracing import Tracer, incoming_trace_id

if TYPE_CHECKING:
    from frontgate.server.exchange import Exchange

log = logging.getLogger("frontgate.observability")

FLUSH_EVERY = 0.1  # seconds a finished request may wait to be counted and logged
FLUSH_AT = 256  # requests; a larger batch would pause the event loop for longer in one go

# (end, start, route | None, method, status, tries, bytes in, bytes out, grpc status | None, request id | None,
#  trace | None, client ip, consumer | None, host, path, ctx.state, ctx.rate_limit); times are monotonic
# seconds, tries are `ctx.tries`. The last eight are filled only when the access log is on. The trace is
# `ctx.trace` with tracing on (trace_id_hex makes its id), else the trace id of the request's own traceparent.
Record = tuple[Any, ...]


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
        trace = ctx.trace
        if type(trace) is not bytes and self._tracer is not None:  # bytes: decided, not sampled
            self._tracer.finish(exchange, now)
            trace = ctx.trace
        if self._access_log is not None:
            record: Record = (
                now, ctx.started, exchange.route, ctx.method, exchange.status, ctx.tries, exchange.body_bytes,
                exchange.bytes_out, exchange.grpc_status, ctx.request_id_made,
                trace if self._tracer is not None else (
                    incoming_trace_id(ctx.header_lines()) if ctx.trace_context else None),
                ctx.client_ip, ctx.consumer, ctx.host, ctx.path, ctx.state, ctx.rate_limit)
        elif self._metrics is not None:
            record = (now, ctx.started, exchange.route, ctx.method, exchange.status, ctx.tries, exchange.body_bytes,
                      exchange.bytes_out, exchange.grpc_status)
        else:
            return  # tracing alone: nothing to batch
        pending = self._pending
        pending.append(record)
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
