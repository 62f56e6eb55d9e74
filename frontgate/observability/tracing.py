"""OpenTelemetry tracing: W3C trace context in and out, one server span per request, one client span per
upstream try, exported by OTLP/HTTP in batches from a thread.

The request path does only what a trace needs there: read an incoming `traceparent` (once), decide
sampling (the parent's flag when there is one, else `sample_ratio` on the trace id, as OpenTelemetry's
ParentBased(TraceIdRatioBased) sampler does), write a `traceparent` for each try (the try's client span is
its parent upstream; `tracestate` passes through untouched), and for a sampled request put one tuple on a
queue. The export thread encodes the spans (frontgate/observability/otlp.py) and sends them. Unsampled
requests are still propagated (flag 00), so an upstream that samples on its own keeps the same trace id.
With tracing off nothing here runs: an incoming `traceparent` is forwarded as any other header.

Most requests start an unsampled trace, so that case makes no number and formats nothing: its ids are
random hex cut, as a whole `traceparent` line, from a buffer of such lines made in bulk (`_random_lines`),
and the line is all the request keeps of its trace (`ctx.trace`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from random import getrandbits
from typing import TYPE_CHECKING, Final, NamedTuple

from frontgate.config.schema import Tracing
from frontgate.observability.otlp import OtlpSender, SpanEncoder

if TYPE_CHECKING:
    from frontgate.pipeline.context import RequestContext
    from frontgate.server.exchange import Exchange

log = logging.getLogger("frontgate.tracing")

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_SAMPLED_LINE: Final = b"traceparent: 00-%032x-%016x-01\r\n"
# An unsampled try's line; "x" marks where random hex goes. Slices of such a line:
_UNSAMPLED_TEMPLATE = b"traceparent: 00-" + b"x" * 32 + b"-" + b"x" * 16 + b"-00\r\n"
_LINE: Final = len(_UNSAMPLED_TEMPLATE)
# Where the trace id's hex digits are, and its low 64 bits (which sampling looks at) start; plain numbers,
# not slice objects, which the compiled build (setup.py) cannot index bytes with.
TRACE_START: Final = 16
TRACE_END: Final = 48
_LOW_START: Final = 32
_SPAN_START: Final = 49  # the try's span id and the flags follow; everything before is the trace's
_LINES_PER_FILL: Final = 512
_FILL: Final = _LINE * _LINES_PER_FILL
EXPORT_EVERY = 1.0  # seconds between batches when traffic is light
BATCH: Final = 512  # spans per export request; a full batch wakes the exporter early
MAX_QUEUE: Final = 4096  # requests waiting for export; beyond, spans are dropped and counted
_EXPORT_TIMEOUT = 5.0  # seconds one batch may take, a new connection after a dropped one included
BACKOFF_FIRST = 1.0  # seconds without exports after a failed one, doubled by each failure in a row
BACKOFF_MAX = 30.0
_WARN_EVERY = 60.0  # seconds between two warnings about a failing collector


class Trace:
    """The context of a sampled request's trace (an unsampled one is only its trace id: `ctx.trace` holds
    an int then, so the common case makes no object)."""

    __slots__ = ("client_ids", "parent_id", "sampled", "span_id", "trace_id", "tracestate")

    def __init__(self, trace_id: int, parent_id: int, sampled: bool, tracestate: str | None) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id  # the caller's span, 0 when the request started the trace
        self.sampled = sampled
        self.tracestate = tracestate
        self.span_id = getrandbits(64) or 1  # our server span
        self.client_ids: list[int] = []  # the client span of each try, by try index (0: not sent)


def trace_id_hex(trace: Trace | bytes) -> str:
    """The 32 hex digits of a request's trace id (`ctx.trace`: its Trace, or the line of an unsampled one)."""
    if isinstance(trace, bytes):
        return trace[TRACE_START:TRACE_END].decode("ascii")
    return f"{trace.trace_id:032x}"


def _random_lines() -> bytes:
    """`_LINES_PER_FILL` traceparent lines of unsampled tries with fresh random ids: random hex for whole lines
    at once, then the fixed characters written over it column by column (C-level slice assignments), so a
    try costs one slice instead of making random numbers and formatting them."""
    count = _LINES_PER_FILL
    while True:
        lines = bytearray(os.urandom(_LINE * count // 2).hex().encode())
        for column, char in enumerate(_UNSAMPLED_TEMPLATE):
            if char != 120:  # "x"
                lines[column::_LINE] = bytes((char,)) * count
        # All-zero ids are invalid (W3C trace context 3.2.2.3): made again in the unlikely case that any
        # 16 hex digits in a row are zeros (about once in 10^15 fills).
        if lines.find(b"0" * 16) < 0:
            return bytes(lines)


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid W3C traceparent, else None."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, parent_hex, flags = match.group(1, 2, 3, 4)
    if version == b"ff" or (version == b"00" and match.group(5) is not None):
        return None
    trace_id, parent_id = int(trace_hex, 16), int(parent_hex, 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, int(flags, 16)


def incoming_trace_id(lines: list[bytes]) -> str | None:
    """For the access log when tracing is off: the trace id of the request's own valid traceparent."""
    for line in lines:
        if line[0] == 116 and line.startswith(b"traceparent: "):  # 116: "t", a cheap first test
            parsed = parse_traceparent(line[13:-2])
            return f"{parsed[0]:032x}" if parsed else None
    return None


class Tracer:
    def __init__(self, config: Tracing) -> None:
        self.config = config
        bound = round(config.sample_ratio * (1 << 64))
        # A new trace is sampled when its trace id's low 64 bits are under `bound`; compared as 16 hex
        # digits (fixed-width lowercase hex sorts as the numbers do; b"g" is above all of them: ratio 1).
        self._bound_hex = b"%016x" % bound if bound < 1 << 64 else b"g"
        # Lines with random ids (`_random_lines`) and where the next one starts; filled on first use, so
        # forked workers never share ids.
        self._random = b""
        self._at = _FILL
        self._exporter = SpanExporter(config)
        self.dropped = 0

    @classmethod
    def from_config(cls, config: Tracing | None) -> Tracer | None:
        return cls(config) if config is not None else None

    def begin(self, exchange: Exchange) -> Trace | bytes:
        """Read the caller's trace context (taking its traceparent out of the forwarded headers: each try
        gets its own) and decide sampling. An unsampled trace is kept as its first try's traceparent line."""
        ctx = exchange.ctx
        if ctx.trace_context:
            lines = ctx.header_lines()
            for line in lines:
                if line[0] == 116 and line.startswith(b"trace"):  # 116: "t", a cheap first test
                    ctx.trace = trace = self._continue(ctx, lines)
                    return trace
        # A new trace, as most requests start: `_new_trace` inline (this runs for every request).
        at = self._at
        if at == _FILL:
            self._random, at = _random_lines(), 0
        self._at = at + _LINE
        line = self._random[at:at + _LINE]
        sampled = line[_LOW_START:TRACE_END] < self._bound_hex
        ctx.trace = trace = Trace(int(line[TRACE_START:TRACE_END], 16), 0, True, None) if sampled else line
        return trace

    def _new_trace(self) -> Trace | bytes:
        """A new trace, sampled when the low 64 bits of its random id are under the ratio."""
        line = self._fresh_line()
        if line[_LOW_START:TRACE_END] < self._bound_hex:
            return Trace(int(line[TRACE_START:TRACE_END], 16), 0, True, None)
        return line

    def _fresh_line(self) -> bytes:
        """The traceparent line of an unsampled try with random ids."""
        at = self._at
        if at == _FILL:
            self._random, at = _random_lines(), 0
        self._at = at + _LINE
        return self._random[at:at + _LINE]

    def _continue(self, ctx: RequestContext, lines: list[bytes]) -> Trace | bytes:
        """The request carries trace context: follow it when it is valid."""
        parent = None
        found = False
        states: list[str] = []
        for line in lines:
            if line.startswith(b"tracep"):
                if line.startswith(b"traceparent: "):
                    parent = None if found else parse_traceparent(line[13:-2])  # two of them: invalid
                    found = True
            elif line.startswith(b"tracestate: "):
                states.append(line[12:-2].decode("latin-1").strip())
        trace: Trace | bytes
        if parent is not None:
            trace_id, parent_id, flags = parent
            if flags & 1:
                trace = Trace(trace_id, parent_id, True, ",".join(states) or None)
            else:  # the caller's trace id, our own span id
                trace = b"traceparent: 00-%032x" % trace_id + self._fresh_line()[_SPAN_START - 1:]
        else:
            trace = self._new_trace()
        if found:
            # A broken traceparent invalidates the tracestate that came with it (W3C trace context §3.3).
            drop = (b"traceparent: ",) if parent is not None else (b"traceparent: ", b"tracestate: ")
            ctx.set_header_lines([line for line in lines if not line.startswith(drop)])
        return trace

    def upstream_traceparent(self, exchange: Exchange) -> bytes:
        """The `traceparent` header line of the try being sent: its client span is the upstream's parent."""
        trace = exchange.ctx.trace
        if trace is None:  # the first try: an unsampled trace's line is the one `begin` made
            trace = self.begin(exchange)
            if type(trace) is bytes:
                return trace
        elif type(trace) is bytes:  # another try of an unsampled trace: the same trace id, a fresh span id
            return trace[:_SPAN_START] + self._fresh_line()[_SPAN_START:]
        assert isinstance(trace, Trace)
        span_id = getrandbits(64) or 1
        ids = trace.client_ids
        index = exchange.attempts - 1
        while len(ids) <= index:
            ids.append(0)
        ids[index] = span_id
        return _SAMPLED_LINE % (trace.trace_id, span_id)

    def finish(self, exchange: Exchange, now: float) -> None:
        """The request is over: a sampled one goes to the export queue."""
        trace = exchange.ctx.trace
        if trace is None:
            trace = self.begin(exchange)
        if type(trace) is bytes:  # not sampled
            return
        assert isinstance(trace, Trace)
        exporter = self._exporter
        if len(exporter.queue) >= MAX_QUEUE:
            self.dropped += 1 + exchange.attempts
            return
        exporter.queue.append(_finished(exchange, trace, now))
        if len(exporter.queue) == BATCH:  # once, as it fills (not again on every request while backing off)
            exporter.wake.set()

    def counts(self) -> dict[str, int]:
        return {"exported": self._exporter.exported, "failed": self._exporter.failed, "dropped": self.dropped}

    def close(self) -> None:
        self._exporter.close()


class _Try(NamedTuple):
    upstream: str
    host: str
    port: int
    url: str
    started: float
    ended: float
    ok: bool
    protocol_version: str  # "1.1", or "2" to an HTTP/2 upstream


class _Finished(NamedTuple):
    """What the export thread needs of a sampled request; read on the loop, turned into spans later."""

    trace: Trace
    method: str
    scheme: str
    host: str
    path: str
    upstream_path: str
    client_ip: str
    peer_ip: str
    http_version: str
    user_agent: str | None
    route: str | None
    http_route: str | None
    request_id: str
    consumer: str | None
    status: int
    grpc_status: int | None
    upstream_answered: bool  # the status came from the upstream (not a gateway error)
    cut: bool
    started: float
    ended: float
    tries: list[_Try]


def _finished(exchange: Exchange, trace: Trace, now: float) -> _Finished:
    ctx = exchange.ctx
    route = exchange.route
    agent = None
    for line in ctx.header_lines():
        if line.startswith(b"user-agent: "):
            agent = line[12:-2].decode("latin-1")
            break
    tries = [_Try(cluster.name, target.host, target.port, target.url, started, ended or now, ok,
                  "2" if target.pool.key.http2 else "1.1")
             for cluster, target, started, ended, ok in ctx.tries or ()]
    return _Finished(
        trace, ctx.method, ctx.scheme, ctx.host, ctx.path, ctx.upstream_path, ctx.client_ip, ctx.peer_ip,
        ctx.http_version, agent, route.name if route else None, _http_route(exchange), ctx.request_id,
        ctx.consumer, exchange.status, exchange.grpc_status, exchange.response_started, exchange.cut, ctx.started,
        now, tries,
    )


def _http_route(exchange: Exchange) -> str | None:
    """The route's path template (semantic conventions' `http.route`) when it declares exactly one."""
    route = exchange.route
    if route is None:
        return None
    match = route.config.match
    patterns = [*match.exact, *(p.rstrip("/") + "/*" for p in match.paths), *match.regex]
    return patterns[0] if len(patterns) == 1 else None


class SpanExporter:
    """The export thread: encodes finished requests as OTLP protobuf (`otlp.SpanEncoder`) and POSTs them.

    After a failed export (refused, timed out, not 2xx) it backs off, 1 s doubling to 30 s and back to 1 s
    after a success, so a collector that is down costs a connection attempt now and then; meanwhile
    finished requests wait in the queue, up to MAX_QUEUE."""

    def __init__(self, config: Tracing) -> None:
        endpoint = config.otlp_endpoint.rstrip("/")
        self.endpoint = endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"
        self._sender = OtlpSender(self.endpoint)
        self._encoder = SpanEncoder(config.service_name, time.time() - time.monotonic())
        self.queue: deque[_Finished] = deque()
        self.wake = threading.Event()
        self._stop = False
        self.exported = 0
        self.failed = 0
        self.retry_at = 0.0  # monotonic time of the next try after a failure
        self._backoff = BACKOFF_FIRST
        self._warned = 0.0
        self._worker = threading.Thread(target=self._run, name="frontgate-otlp", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while not self._stop:
            backing_off = self.retry_at - time.monotonic()
            # A full batch wakes the thread early, but not out of a backoff: it waits again for the rest.
            self.wake.wait(backing_off if backing_off > 0 else EXPORT_EVERY)
            self.wake.clear()
            if time.monotonic() >= self.retry_at and not self._stop:
                self._drain(None)

    def _drain(self, deadline: float | None) -> None:
        """Export batches until the queue is empty, a batch fails or `deadline` (monotonic) passes."""
        queue = self.queue
        while queue:
            timeout = _EXPORT_TIMEOUT if deadline is None else min(_EXPORT_TIMEOUT, deadline - time.monotonic())
            if timeout <= 0:
                return
            batch = []
            spans = 0
            while queue and spans < BATCH:
                done = queue.popleft()
                batch.append(done)
                spans += 1 + len(done.tries)
            try:
                ok = self._sender.post(self._encoder.encode(batch), timeout)
            except Exception:  # a bug in encoding must not stop the thread
                log.exception("trace export failed")
                ok = False
            if ok:
                self.exported += spans
                self._backoff = BACKOFF_FIRST
                continue
            self.failed += spans
            self._back_off()
            return

    def _back_off(self) -> None:
        now = time.monotonic()
        self.retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning("trace export to %s failed; %d spans lost so far", self.endpoint, self.failed)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (one more try even when backing off), within about `timeout` seconds; stop."""
        deadline = time.monotonic() + timeout
        self._stop = True
        self.wake.set()
        self._worker.join(timeout)
        if not self._worker.is_alive():
            self._drain(deadline)
        self._sender.close()
