"""The access log: one JSON line per request, to stdout, stderr or a file; the format is in docs/access-log.md.

Lines are formatted in batches (frontgate/observability/batch.py: at most 100 ms or 256 requests after
they ended; string escapes in C, the time prefix made once a second, the text requests of one kind share
made once) and handed as one block to a writer thread, which does the `write` calls, so a slow disk or a
reader that stops reading a pipe never stalls the event loop. If the writer falls more than `MAX_BACKLOG`
bytes behind, blocks are dropped and counted (`frontgate_access_log_dropped_lines_total`) rather than held
without limit.

A file is opened with O_APPEND and reopened on SIGUSR1, after log rotation moved it away (the same
contract as nginx's USR1): lines handed over before the signal go to the old file, later ones to the new.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any, Final, Literal, final

from frontgate.config.schema import AccessLog as AccessLogConfig
from frontgate.observability.metrics import (
    NO_ROUTE,
    NO_UPSTREAM,
    AttemptSeries,
    RequestMetrics,
    RequestSeries,
    latency_bucket,
)
from frontgate.observability.tracing import TRACE_END, TRACE_START, Trace, trace_id_hex
from frontgate.pipeline.context import new_request_ids

if TYPE_CHECKING:
    from frontgate.observability.batch import Record

MAX_BACKLOG = 16 * 1024 * 1024  # bytes handed over but not yet written; beyond, lines are dropped
_REOPEN = b""  # in the writer's queue: close and reopen the file
PAUSE = 0.05  # seconds the writer thread waits after writing, for more blocks to write at once
_MAX_BLOCKS = 256  # blocks in one writev (the system allows 1024)
_MILLIS: Final = [f".{ms:03d}Z" for ms in range(1000)]  # the time's fraction, made once
_MAX_SHAPES: Final = 4096  # kinds of request whose pieces are kept; beyond, they are made again
_NO_OUTCOMES: Final = '"cache":null,"auth_failure":null,"rate_limit":null}\n'
_LIMIT_OK: Final = '"cache":null,"auth_failure":null,"rate_limit":"ok"}\n'  # the other common case


def _write_all(fd: int, blocks: list[bytes]) -> None:
    """One `writev` for all the blocks (again for what a short write left)."""
    views = [memoryview(block) for block in blocks]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)


@final
class _Shape:
    """The fixed text between a line's own values, for requests of one kind, and with metrics on, the series
    they count under: the request's, and the try's when there is exactly one."""

    __slots__ = ("attempts", "before_bytes_in", "before_outcomes", "before_path", "before_upstream_us", "series")

    def __init__(self, before_path: str, before_upstream_us: str, before_bytes_in: str, before_outcomes: str,
                 series: RequestSeries | None, attempts: AttemptSeries | None) -> None:
        self.before_path = before_path
        self.before_upstream_us = before_upstream_us
        self.before_bytes_in = before_bytes_in
        self.before_outcomes = before_outcomes
        self.series = series
        self.attempts = attempts


def _shape(consumer: str | None, method: str, host: str, route: str | None, last: list[Any] | None,
           status: int, grpc_status: int | None, tries: int, metrics: RequestMetrics | None) -> _Shape:
    series = attempts = None
    if metrics is not None:
        series = metrics.request_series(route or NO_ROUTE, method, status, last[0].name if last else NO_UPSTREAM)
        if tries == 1 and last is not None:
            attempts = metrics.attempt_series(last[0], last[1])
    if last is None:
        upstream = '"upstream":null,"target":null,"upstream_us":'
    else:
        cluster, target = last[0], last[1]
        upstream = f'"upstream":{_quote(cluster.name)},"target":{_quote(target.url)},"upstream_us":'
    return _Shape(
        f',"consumer":{_text(consumer)},"method":{_quote(method)},"host":{_quote(host)},"path":',
        f',"route":{_text(route)},{upstream}',
        f',"status":{status},"grpc_status":{"null" if grpc_status is None else grpc_status},"bytes_in":',
        f',"retries":{max(tries - 1, 0)},',
        series,
        attempts,
    )


def _outcomes(state: dict[str, Any] | None, limit: Any) -> str:
    """The last fields of a line: what plugins noted in `ctx.state`, and the rate limit's decision."""
    if state is None:
        state = {}
    return (f'"cache":{_text(state.get("cache"))},"auth_failure":{_text(state.get("auth_failure"))},'
            f'"rate_limit":{_text(_limit_outcome(limit))}}}\n')


class _Writer:
    """A thread that owns the file descriptor and writes what the event loop hands it."""

    def __init__(self, path: str | None, fd: int) -> None:
        self.path = path
        self.fd = self._open() if path is not None else fd
        self.queue: deque[tuple[bytes, int]] = deque()
        self.backlog = 0  # bytes queued; changed under `lock`
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.stopping = False
        self.dropped = 0
        self._worker = threading.Thread(target=self._run, name="frontgate-access-log", daemon=True)
        self._worker.start()

    def _open(self) -> int:
        assert self.path is not None
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def submit(self, data: bytes, lines: int) -> None:
        with self.lock:
            if data and self.backlog + len(data) > MAX_BACKLOG:
                self.dropped += lines
                return
            self.backlog += len(data)
            self.queue.append((data, lines))
            self.idle.clear()
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.queue:
                if not self.queue[0][0]:
                    self.queue.popleft()
                    self._reopen()
                    continue
                blocks: list[bytes] = []
                lines = 0
                while self.queue and self.queue[0][0] and len(blocks) < _MAX_BLOCKS:
                    data, count = self.queue.popleft()
                    blocks.append(data)
                    lines += count
                try:
                    _write_all(self.fd, blocks)
                except OSError:
                    failed = lines
                else:
                    failed = 0
                with self.lock:
                    self.backlog -= sum(map(len, blocks))
                    self.dropped += failed
            with self.lock:
                if not self.queue:
                    self.idle.set()
            if self.stopping and not self.queue:
                return
            # Let blocks gather: under load the thread takes the GIL a few times per PAUSE instead of for
            # every block (each time the event loop gives it up costs more than the write itself).
            if not self.stopping:
                time.sleep(PAUSE)

    def _reopen(self) -> None:
        if self.path is None:
            return
        try:
            fd = self._open()
        except OSError:
            return  # keep writing where we were rather than lose lines
        os.close(self.fd)
        self.fd = fd

    def close(self, timeout: float) -> None:
        self.stopping = True
        self.wake.set()
        self._worker.join(timeout)
        if self.path is not None and not self._worker.is_alive():
            os.close(self.fd)


class AccessLog:
    def __init__(self, path: str | None, fd: int | None) -> None:
        self.enabled = fd is not None or path is not None
        self._writer = _Writer(path, fd if fd is not None else -1) if self.enabled else None
        # Wall time, checked against the clock once a second: a line's time is its request's monotonic end
        # plus `_offset`; `_stamp` is the start of the line up to the second, for the second that begins at
        # `_second_ms` (wall milliseconds).
        self._offset = 0.0
        self._second_ms = 0
        self._stamp = ""
        # (consumer, method, host, route name, last target's state, status, grpc status, tries) -> `_shape`,
        # plus the metric series such requests count under, in `_shapes_metrics`
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self._shapes_metrics: RequestMetrics | None = None

    @classmethod
    def from_config(cls, config: AccessLogConfig | Literal[False]) -> AccessLog:
        if config is False:
            return cls(None, None)
        if config.to == "stdout":
            return cls(None, sys.stdout.fileno())
        if config.to == "stderr":
            return cls(None, sys.stderr.fileno())
        return cls(config.to, None)

    @property
    def dropped(self) -> int:
        return self._writer.dropped if self._writer is not None else 0

    def write(self, records: list[Record], metrics: RequestMetrics | None = None) -> None:
        """Format the JSON lines of finished requests (see frontgate/observability/batch.py for a record) and
        hand them to the writer thread as one block; with `metrics`, count them too.

        One loop for the whole batch, its state in locals. The fields requests of one kind share (method,
        host, route, target, status...) come as ready-made pieces from `_shapes`, so a line formats only
        what is its own: time, ids, client, path, sizes and durations. Requests of one kind also share their
        metric series, kept with the pieces: counting costs a few additions (`RequestMetrics.count` makes
        the same numbers in a loop of its own)."""
        writer = self._writer
        if writer is None or not records:
            return
        if metrics is not self._shapes_metrics:
            self._shapes.clear()
            self._shapes_metrics = metrics
        quote, millis_text = _quote, _MILLIS  # module globals are a dict lookup each time, locals are not
        lines: list[str] = []
        append = lines.append
        offset, second_ms, stamp = self._offset, self._second_ms, self._stamp
        shapes = self._shapes
        if len(shapes) > _MAX_SHAPES:
            shapes.clear()
        # Ids for the requests that never needed one, made all at once.
        next_id = iter(new_request_ids([record.request_id for record in records].count(None))).__next__
        for record in records:
            now = record.now
            millis = int((now + offset) * 1000.0) - second_ms
            if not 0 <= millis < 1000:
                self._next_second(now)
                offset, second_ms, stamp = self._offset, self._second_ms, self._stamp
                millis = int((now + offset) * 1000.0) - second_ms
            consumer, method, host, route = record.consumer, record.method, record.host, record.route
            status, grpc_status, tries = record.status, record.grpc_status, record.tries
            last: list[Any] | None = None  # the last try: [cluster, target, started, ended, ok]
            if tries:
                last = tries[-1]
                try_elapsed: float = (last[3] or now) - last[2]  # 0: the try was still open when the exchange ended
                upstream_us = str(int(try_elapsed * 1e6))
                key: tuple[Any, ...] = (consumer, method, host, route, last[1].state, status, grpc_status, len(tries))
            else:
                try_elapsed, upstream_us = 0.0, "null"
                key = (consumer, method, host, route, None, status, grpc_status, 0)
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = _shape(consumer, method, host, route, last, status, grpc_status,
                                             len(tries) if tries else 0, metrics)
            elapsed = now - record.started
            bytes_in, bytes_out = record.bytes_in, record.bytes_out
            series = shape.series
            if series is not None:  # metrics on: `RequestMetrics.count`, inline
                series.total += elapsed
                series.buckets[latency_bucket(elapsed)] += 1
                if bytes_in:
                    series.bytes_in += bytes_in
                series.bytes_out += bytes_out
                attempts = shape.attempts
                if attempts is not None:  # the one try
                    assert last is not None
                    attempts.total += try_elapsed
                    attempts.buckets[latency_bucket(try_elapsed)] += 1
                    if not last[4]:
                        attempts.errors += 1
                elif tries:  # retried
                    assert metrics is not None  # a shape has series only with metrics on
                    metrics.count_tries(tries, now)
                if grpc_status is not None:
                    assert metrics is not None
                    metrics.count_grpc(route or NO_ROUTE, last[0].name if last else NO_UPSTREAM, grpc_status)
            trace = record.trace
            if trace is None:
                mark, trace_id = "", "null"
            elif isinstance(trace, bytes):  # an unsampled trace's traceparent line
                mark, trace_id = '"', trace[TRACE_START:TRACE_END].decode()
            elif isinstance(trace, str):  # with tracing off, the caller's trace id
                mark, trace_id = '"', trace
            else:
                assert isinstance(trace, Trace)
                mark, trace_id = '"', trace_id_hex(trace)
            state, limit = record.state, record.limit
            if state or limit is not None:
                outcomes = _LIMIT_OK if not state and limit[1].allowed else _outcomes(state, limit)
            else:
                outcomes = _NO_OUTCOMES
            # Ids the gateway made are hex: only one that came from elsewhere needs escaping.
            request_id = record.request_id
            request_id = next_id() if request_id is None else quote(request_id)[1:-1]
            append(
                f'{stamp}{millis_text[millis]}","request_id":"{request_id}","trace_id":{mark}{trace_id}{mark},'
                f'"client_ip":{quote(record.client_ip)}{shape.before_path}{quote(record.path)}'
                f'{shape.before_upstream_us}{upstream_us}{shape.before_bytes_in}{bytes_in},"bytes_out":{bytes_out},'
                f'"duration_us":{int(elapsed * 1e6)}{shape.before_outcomes}{outcomes}'
            )
        writer.submit("".join(lines).encode(), len(lines))

    def _next_second(self, now: float) -> None:
        # Wall time is the request's monotonic end time plus an offset that is checked against the clock
        # once a second: one clock read per second instead of one per line.
        self._offset = time.time() - time.monotonic()
        wall_ms = int((now + self._offset) * 1000.0)  # as `write` computes it, so the millis are 0-999
        self._second_ms = wall_ms - wall_ms % 1000
        self._stamp = '{"time":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall_ms // 1000))

    def reopen(self) -> None:
        """SIGUSR1: lines handed over so far go to the file being rotated away, later ones to a new file."""
        if self._writer is not None:
            self._writer.submit(_REOPEN, 0)

    def wait_written(self, timeout: float) -> bool:
        """Wait until the writer has written everything handed to it."""
        return self._writer.idle.wait(timeout) if self._writer is not None else True

    def close(self, timeout: float = 2.0) -> None:
        if self._writer is not None:
            self._writer.close(timeout)


def _limit_outcome(entry: Any) -> str | None:
    """The rate_limit plugin's decision as the log shows it: "ok" or "limited:<names of the limits>"."""
    if entry is None:
        return None
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        applicable, verdict = entry
        if verdict.allowed:
            return "ok"
        names = [name for index, name in enumerate(applicable.names) if verdict.denied >> index & 1]
        return "limited:" + ",".join(names)
    return None
