"""One request through the gateway: plugins, then the upstream (with retries), bodies streamed both ways.

The client connection feeds request events in (`request_body`, `request_complete`); the upstream
connection feeds response events in (the `ResponseReceiver` methods). Only what waits (plugins,
connecting) runs as a coroutine; relaying bytes happens in callbacks, with no task per chunk.

Timing: the route `timeout` bounds everything until the response head (504), retries included, and then
each silence of the upstream while the body streams. `retry.per_try_timeout` bounds each try.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from mypy_extensions import mypyc_attr

from frontgate.config.compile import CompiledRoute, Runtime
from frontgate.errors import BadGateway, GatewayTimeout, HttpError, PayloadTooLarge, ServiceUnavailable
from frontgate.pipeline.context import Reply, RequestContext, RequestSummary, ResponseHead, settled
from frontgate.pipeline.eager import start_eagerly
from frontgate.protocol.http1 import (
    CONTINUE_100,
    LAST_CHUNK,
    RequestFraming,
    chunk,
    forwarded_response_head,
    split_lines,
)
from frontgate.server.aggregate import aggregate
from frontgate.upstream.cluster import Target, UpstreamCluster
from frontgate.upstream.connection import UpstreamChannel, UpstreamReset
from frontgate.upstream.errors import UpstreamConnectError, UpstreamConnectTimeout
from frontgate.upstream.retry import IDEMPOTENT_METHODS, Failure

if TYPE_CHECKING:
    from frontgate.server.gateway import Gateway

log = logging.getLogger("frontgate.exchange")


class Downstream(Protocol):
    """The client side an exchange answers on: an HTTP/1.1 connection, or one HTTP/2 stream."""

    loop: asyncio.AbstractEventLoop
    gateway: Gateway
    out: list[bytes]

    def write(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def send_error(self, exchange: Exchange, error: HttpError) -> None: ...
    def send_local(self, exchange: Exchange, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                   content_type: bytes | None, force_close: bool = False) -> None: ...
    def exchange_finished(self, exchange: Exchange) -> None: ...
    def abort_exchange(self, exchange: Exchange) -> None: ...
    def pause_reading_for(self, reason: str) -> None: ...
    def resume_reading_for(self, reason: str) -> None: ...


def local_reply_head(exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    """The head of a reply the gateway makes itself, after the response hooks (request id echo, CORS...)
    and the headers request hooks asked for on every response."""
    if exchange.ctx.response_lines_add:
        headers = headers + split_lines(exchange.ctx.response_lines_add)
    head = ResponseHead(status, headers)
    route = exchange.route
    for hook in route.response_hooks if route is not None else exchange.runtime.unrouted_response_hooks:
        hook(exchange.ctx, head)
    return head

# Request body bytes held while the upstream connection is not ready yet; beyond this, stop reading.
BODY_BUFFER_HIGH_WATER = 64 * 1024
# Request bodies up to this size are kept so a retry can send them again; larger ones are not retried
# once any of their bytes went upstream.
REPLAY_LIMIT = 64 * 1024
_NEVER = float("inf")
_PLAIN_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive"})


@mypyc_attr(native_class=False)  # compiled (setup.py), a native class would not keep these class attributes
class NoHealthyTarget(ServiceUnavailable):
    code = "no_healthy_upstream"
    message = "No healthy upstream target is available."


@mypyc_attr(native_class=False)
class UpstreamResponseTooLarge(BadGateway):
    code = "upstream_response_too_large"
    message = "The upstream's response is too large for this route to transform."


@mypyc_attr(native_class=False)
class CircuitOpen(ServiceUnavailable):
    code = "circuit_open"
    message = "The upstream is overloaded or failing; try again later."


@mypyc_attr(allow_interpreted_subclasses=True)  # H2Exchange and WebSocketHandshake extend it
class Exchange:
    # Per-request state starts from these class-level defaults: only what differs per request is set in
    # __init__, which runs for every request (no __slots__, so an attribute can fall back to its default).
    upstream: UpstreamChannel | None = None
    target: Target | None = None
    target_url: str | None = None
    response_started = False
    finished = False
    cut = False  # the response was started and then cut off
    observed = False  # reported to the gateway's accounting (exactly once)
    status = 0
    grpc_status: int | None = None  # the upstream's grpc-status (HTTP/2 upstreams set it), for the accounting
    bytes_out = 0
    body_bytes = 0
    attempts = 0
    deadline = _NEVER  # checked by the gateway's sweeper (see check_deadline)
    last_upstream_activity = 0.0
    _chunked_out = False
    _pending_bytes = 0
    _cluster: UpstreamCluster | None = None
    _deadline = 0.0
    _replay: list[bytes] | None = None
    _replay_bytes = 0
    _stale_retried = False
    _budget_held = False
    _try_timer: asyncio.TimerHandle | None = None
    _backoff: asyncio.TimerHandle | None = None
    _task: asyncio.Task[None] | None = None
    _awaiting_body = False  # the route's body hooks wait for the whole request body
    # A response held for the route's response-body hooks: (status, lines, has_date, the upstream's length
    # or None when chunked), and its body so far
    _held: tuple[int, list[bytes], bool, int | None] | None = None
    _held_body: list[bytes] | None = None
    _held_bytes = 0
    _body_checked = False

    def __init__(
        self,
        conn: Downstream,
        runtime: Runtime,
        ctx: RequestContext,
        framing: RequestFraming,
        route: CompiledRoute | None,
        error: HttpError | None,
    ) -> None:
        """`route` is None when routing failed; then `error` (404 or 405) is the answer."""
        self.conn = conn
        self.runtime = runtime
        self.ctx = ctx
        self.framing = framing
        self.route = route
        self.error = error
        self.max_body_bytes = route.max_body_bytes if route else runtime.config.server.limits.max_body_bytes
        self.head_only = ctx.method == "HEAD"
        self.keep_alive = framing.keep_alive
        self.body_complete = self.upstream_body_done = not (framing.chunked or framing.content_length)
        self._pending: list[bytes] = []
        self._tried: list[Target] = []
        self.upstream = None  # also a class default, which the mypyc build leaves unset (see setup.py)
        self._held = None  # read for every response: an instance attribute is the faster read
        self._awaiting_body = False  # read at the end of every request
        if conn.gateway.record_tries:
            ctx.tries = []  # for metrics, traces and the access log (see RequestContext.tries)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        route = self.route
        if route is None:
            self.fail(self.error or HttpError())
            return
        if route.request_hooks:
            # Hooks that answer at once run here, in the caller's stack; the first that must wait carries the
            # rest on in a coroutine (eagerly: it becomes a Task only if it really suspends).
            ctx = self.ctx
            index = 0
            try:
                for hook in route.request_hooks:
                    index += 1
                    result = hook(ctx)
                    if result is None:
                        continue
                    if isinstance(result, Reply):
                        self.send_reply(result)
                    else:
                        task = start_eagerly(self._run(route, index, result), self.conn.loop)
                        if task is not None:
                            self._task = task
                    return
            except HttpError as error:
                self.fail(error)
                return
            except Exception:
                log.exception("unexpected error in route %s", route.name)
                self.fail(HttpError())
                return
        if self.framing.expect_continue and not self.body_complete:
            self.conn.write(CONTINUE_100)
        self._dispatch(route)  # nothing to await before the upstream: no task at all

    def abort(self) -> None:
        """The client went away or the connection is being torn down."""
        if not self.observed:
            self.conn.gateway.observe(self)
        self.finished = True
        self._drop_upstream()
        self._end()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self, route: CompiledRoute, index: int, pending: Awaitable[Reply | None]) -> None:
        """Carry the request hooks on from the one at `index - 1`, which is waiting for `pending`."""
        try:
            reply = await pending
            hooks = route.request_hooks
            while True:
                if self.finished:  # the client left or a timeout answered while the hook waited
                    return
                if reply is not None:
                    self.send_reply(reply)
                    return
                if index == len(hooks):
                    break
                reply = await settled(hooks[index](self.ctx))
                index += 1
            if self.framing.expect_continue and not self.body_complete:
                self.conn.write(CONTINUE_100)
            self._dispatch(route)
        except HttpError as error:
            self.fail(error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error in route %s", route.name)
            self.fail(HttpError())

    def summary(self) -> RequestSummary:
        return RequestSummary(
            status=self.status,
            bytes_in=self.body_bytes,
            bytes_out=self.bytes_out,
            duration=time.monotonic() - self.ctx.started,
            upstream=self.target_url,
            completed=self.finished and self.status != 0 and not self.cut,
            attempts=self.attempts,
        )

    def gone(self) -> bool:
        """Finished while we awaited (timeout, client left): a method, so type narrowing cannot cache it."""
        return self.finished

    # --- request side -----------------------------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.finished:
            return  # answered early (error or upstream reply); the connection closes after the body
        self.body_bytes += len(data)
        if self.body_bytes > self.max_body_bytes:
            self.fail(PayloadTooLarge())
            return
        upstream = self.upstream
        if upstream is not None and not self._pending:
            self._keep_for_replay(data)
            upstream.write(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > BODY_BUFFER_HIGH_WATER and not self._awaiting_body:
            self.conn.pause_reading_for("body")

    def request_complete(self) -> None:
        self.body_complete = True
        if self._awaiting_body:
            self._awaiting_body = False
            assert self.route is not None
            self._dispatch(self.route)
            return
        if self.upstream is not None and not self._pending and not self.upstream_body_done:
            self._end_upstream_body(self.upstream)

    def _end_upstream_body(self, upstream: UpstreamChannel) -> None:
        upstream.end_body()
        self.upstream_body_done = True

    def _flush_pending(self, upstream: UpstreamChannel) -> None:
        if self._pending:
            for data in self._pending:
                self._keep_for_replay(data)
            upstream.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_bytes = 0
            self.conn.resume_reading_for("body")
        if self.body_complete and not self.upstream_body_done:
            self._end_upstream_body(upstream)

    def _keep_for_replay(self, data: bytes) -> None:
        if self._replay is not None:
            self._replay_bytes += len(data)
            if self._replay_bytes > REPLAY_LIMIT:
                self._replay = None  # too big to resend: this request will not be retried after sending
            else:
                self._replay.append(data)

    # --- to the upstream --------------------------------------------------------------------------

    def _dispatch(self, route: CompiledRoute) -> None:
        """Choose the upstream (cohort) once; then try targets until one answers or the policy says stop."""
        if route.body_hooks and not self._body_checked:
            if not self.body_complete:  # read the whole body first (bounded by max_body_bytes); then on
                self._awaiting_body = True
                self.conn.resume_reading_for("body")
                return
            self._body_checked = True
            if not self._body_passes(route):
                return
        if route.aggregate is not None:  # no single upstream: calls to several, combined (server/aggregate.py)
            # Its legs end by the route's deadline, and the aggregate answers then (not the 504 timer).
            deadline = self.conn.loop.time() + route.timeout
            self._task = self.conn.loop.create_task(aggregate(self, route.aggregate, deadline))
            return
        ctx = self.ctx
        cluster = route.only_cluster
        if cluster is None:
            key = route.sticky_key(ctx.headers, ctx.client_ip, ctx.claims) if route.sticky_key else None
            cluster = route.clusters[route.split.pick(key)]
        self._cluster = cluster
        cluster.state.budget.active_requests += 1
        if route.retry.attempts > 1 and (ctx.method in IDEMPOTENT_METHODS or ctx.header(b"idempotency-key")):
            self._replay = []  # replay-safe: keep what is sent, so a retry can send it again
        self.deadline = self._deadline = self.conn.loop.time() + route.timeout
        self._attempt()

    def _body_passes(self, route: CompiledRoute) -> bool:
        """Run the body hooks over the whole (buffered) request body; False when one answered."""
        body = b"".join(self._pending)
        try:
            for hook in route.body_hooks:
                reply = hook(self.ctx, body)
                if isinstance(reply, bytes):  # a new body, sent with its own length
                    body = reply
                    self._pending, self._pending_bytes = [body], len(body)
                    self.framing = replace(self.framing, content_length=len(body), chunked=False)
                elif reply is not None:
                    self.send_reply(reply)
                    return False
        except HttpError as error:
            self.fail(error)
            return False
        except Exception:
            log.exception("unexpected error in route %s", route.name)
            self.fail(HttpError())
            return False
        return True

    def _attempt(self) -> None:
        self._backoff = None
        if self.finished:
            return
        route, cluster = self.route, self._cluster
        assert route is not None and cluster is not None
        ctx = self.ctx
        hash_key = cluster.hash_key(ctx.headers, ctx.client_ip, ctx.claims) if cluster.hash_key else None
        target = cluster.pick(hash_key, self._tried)
        if target is None:
            tripped = any(not t.state.breaker.admits() for t in cluster.targets)
            self.fail(CircuitOpen() if tripped else NoHealthyTarget())
            return
        state = cluster.state
        upstream_breaker, target_breaker = state.breaker, target.state.breaker
        # Closed breakers only cap requests in flight: checked inline, `allow` for everything else.
        if not (upstream_breaker.closed and state.in_flight < upstream_breaker.max_in_flight
                and target_breaker.closed and target.pool.in_flight < target_breaker.max_in_flight) and (
                not upstream_breaker.allow(state.in_flight) or not target_breaker.allow(target.pool.in_flight)):
            self.fail(CircuitOpen())
            return
        self.attempts += 1
        tries = ctx.tries
        if tries is not None:
            tries.append([cluster, target, time.monotonic(), 0.0, False])
        self.target = target
        self.target_url = target.url
        self._tried.append(target)
        target.pool.in_flight += 1
        state.in_flight += 1
        loop = self.conn.loop
        per_try = route.retry.per_try_timeout
        if per_try is not None:
            self._try_timer = loop.call_later(min(per_try, self._deadline - loop.time()), self._on_try_timeout)
        upstream = target.pool.take_idle()
        if upstream is not None:
            self._send(upstream)
        else:
            self._task = loop.create_task(self._connect_and_send(target))

    async def _connect_and_send(self, target: Target) -> None:
        try:
            upstream = await target.pool.connect()
        except (UpstreamConnectError, UpstreamConnectTimeout) as error:
            if not self.gone() and target is self.target:
                self._try_failed(Failure.CONNECT, error)
            return
        if self.gone() or target is not self.target:
            target.pool.release(upstream, True)  # a healthy new connection: keep it for the next request
            return
        self._send(upstream)

    def _send(self, upstream: UpstreamChannel) -> None:
        assert self.target is not None
        self.upstream = upstream
        self.upstream_body_done = not (self.framing.chunked or self.framing.content_length)
        upstream.start(self, self._upstream_head(self.target), self.head_only, self.framing.chunked)
        if self._replay:
            upstream.write(b"".join(self._replay))
        if self._pending or not self.upstream_body_done:
            self._flush_pending(upstream)

    def _upstream_head(self, target: Target) -> bytes:
        ctx = self.ctx
        cluster = self._cluster
        assert cluster is not None
        target_bytes = ctx.upstream_path.encode("latin-1")
        if ctx.query:
            target_bytes += b"?" + ctx.query
        host = self.framing.host if cluster.preserve_host and self.framing.host else target.host_header
        if self.attempts == 1 and not self._stale_retried:
            deadline_line = self.route.deadline_line  # type: ignore[union-attr]  # sent at once: the whole timeout
        else:
            remaining_ms = max(0, int((self._deadline - self.conn.loop.time()) * 1000))
            deadline_line = b"\r\nx-request-deadline: %d\r\n" % remaining_ms
        method = ctx.upstream_method or ctx.method
        parts = [method.encode("ascii"), b" ", target_bytes, b" HTTP/1.1\r\nhost: ", host, deadline_line]
        tracer = self.conn.gateway.tracer
        traceparent = tracer.upstream_traceparent(self) if tracer is not None else None  # may edit the lines
        parts += ctx.header_lines()
        if traceparent is not None:
            parts.append(traceparent)
        if self.framing.chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif self.framing.content_length is not None:
            parts.append(b"content-length: %d\r\n" % self.framing.content_length)
        parts.append(b"\r\n")
        return b"".join(parts)

    # --- tries: outcomes and retries --------------------------------------------------------------

    def _end_try(self, ok: bool) -> None:
        """Account for the try that just ended: in-flight counts, breakers, outlier detection."""
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None
        if self._budget_held and self._cluster is not None:
            self._cluster.state.budget.release()
            self._budget_held = False
        target, cluster = self.target, self._cluster
        if target is None or cluster is None:
            return
        self.target = None
        tries = self.ctx.tries
        if tries:
            last = tries[-1]
            last[3], last[4] = time.monotonic(), ok
        cluster.try_ended(target, ok)

    def _try_failed(self, failure: Failure, error: HttpError) -> None:
        self._end_try(ok=False)
        if self._can_retry(failure):
            self._schedule_retry()
        else:
            self.fail(error)

    def _can_retry(self, failure: Failure) -> bool:
        """Asks only; `_schedule_retry` takes the budget."""
        route, cluster = self.route, self._cluster
        if route is None or cluster is None or self.finished:
            return False
        policy = route.retry
        if self.attempts >= policy.attempts or not policy.covers(failure):
            return False
        if self._deadline - self.conn.loop.time() <= 0:
            return False
        # A try that reached the upstream is resent only for a replay-safe request whose body is at hand.
        if failure is not Failure.CONNECT and self._replay is None:
            return False
        return cluster.state.budget.has_room(policy.budget, policy.min_retry_concurrency)

    def _schedule_retry(self) -> None:
        route, cluster = self.route, self._cluster
        assert route is not None and cluster is not None
        cluster.state.budget.acquire()
        self._budget_held = True
        self._backoff = self.conn.loop.call_later(route.retry.backoff(self.attempts), self._attempt)

    def _on_try_timeout(self) -> None:
        self._try_timer = None
        if self.finished or self.response_started:
            return
        self._drop_upstream()
        self._try_failed(Failure.TIMEOUT, GatewayTimeout())

    def check_deadline(self, now: float) -> None:
        """The sweeper saw `deadline` pass. Before the response head it is the route timeout (504); after it,
        it bounds each silence of the upstream (like nginx's proxy_read_timeout). Streaming chunks only stamp
        `last_upstream_activity`; the deadline is moved here, lazily."""
        self.deadline = _NEVER
        if self.finished:
            return
        if not self.response_started:
            self._drop_upstream()
            self._end_try(ok=False)
            self.fail(GatewayTimeout())
            return
        assert self.route is not None
        next_deadline = self.last_upstream_activity + self.route.timeout
        if next_deadline <= now:
            if self._held is not None:  # nothing sent yet: a 504, not a cut
                self._fail_held(GatewayTimeout())
                return
            self.fail(GatewayTimeout())  # the response started: this cuts the connection
        else:
            self.deadline = next_deadline

    # --- ResponseReceiver -------------------------------------------------------------------------

    def response_head(self, status: int, lines: list[bytes], chunked: bool, content_length: int | None) -> None:
        if self.finished:
            return
        route = self.route
        assert route is not None
        if status in route.retry.statuses and self._can_retry(Failure.STATUS):
            self._drop_upstream()  # its body is not wanted; the connection cannot be reused unread
            self._end_try(ok=False)
            self._schedule_retry()
            return
        self.response_started = True
        self.status = status
        self.last_upstream_activity = now = self.conn.loop.time()
        self.deadline = now + route.timeout
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None

        upstream = self.upstream
        assert upstream is not None
        named = upstream.named_hop_by_hop - _PLAIN_CONNECTION_TOKENS
        if named or route.response_hooks:
            if named:  # fields the response's Connection header names are hop-by-hop too
                lines = [line for line in lines if line[: line.index(b":")] not in named]
            head = ResponseHead(status, lines=lines)
            for hook in route.response_hooks:
                hook(self.ctx, head)
            status = head.status
            lines = head.lines()
            has_date = head.has_date(upstream.has_date)
        else:
            has_date = upstream.has_date
        added = self.ctx.response_lines_add
        if added:  # `lines` is this response's own list (a fresh one per response upstream): extended in place
            lines += added
        if route.response_body_hooks and (route.response_hold_always or self.ctx.hold_response) \
                and not self.head_only and status >= 200 and status not in (204, 304):
            self._held = (status, lines, has_date, None if chunked else content_length)
            self._held_body, self._held_bytes = [], 0
            return
        self._send_head(status, lines, None if chunked else content_length, has_date)

    def _hold_body(self, data: bytes) -> None:
        """A held response's body, kept until it is complete (up to the route's limit: 502 beyond)."""
        assert self._held_body is not None and self.route is not None
        self._held_bytes += len(data)
        self.last_upstream_activity = self.conn.loop.time()
        self._held_body.append(data)
        if self._held_bytes > self.route.response_body_limit:
            if self.route.response_hold_always:
                self._fail_held(UpstreamResponseTooLarge())
            else:  # wanted whole only if small enough: it streams on as it is
                self._spill_held()

    def _spill_held(self) -> None:
        """Send a held response as it came (head, what arrived so far), then stream the rest."""
        held, body_parts = self._held, self._held_body
        assert held is not None and body_parts is not None
        self._held = self._held_body = None
        status, lines, has_date, content_length = held
        self._send_head(status, lines, content_length, has_date)
        for part in body_parts:
            self.response_body(part)

    def _fail_held(self, error: HttpError) -> None:
        """A held response will not be sent: nothing of it was, so the client gets a clean error instead."""
        self._drop_upstream()
        self._end_try(ok=False)
        self._held = self._held_body = None
        self.response_started = False
        self.fail(error)

    def _release_held(self) -> None:
        """The held response is complete: let the hooks change it, then send it whole."""
        held, body_parts = self._held, self._held_body
        assert held is not None and body_parts is not None and self.route is not None
        self._held = self._held_body = None
        status, lines, has_date, _ = held
        head = ResponseHead(status, lines=lines)
        body = b"".join(body_parts)
        for hook in self.route.response_body_hooks:
            body = hook(self.ctx, head, body)
        self.status = head.status
        self._send_head(head.status, head.lines(), len(body), has_date)
        if body:
            self.response_body(body)

    def _send_head(self, status: int, lines: list[bytes], content_length: int | None, has_date: bool) -> None:
        """Write the response head to the client (HTTP/1.1 here; the HTTP/2 exchange overrides it)."""
        conn = self.conn
        data, self._chunked_out, close = forwarded_response_head(
            status, lines, content_length,
            b"" if has_date else conn.gateway.date_line,
            self.head_only, self.ctx.http_version, not self.keep_alive or conn.gateway.draining,
        )
        if close:
            self.keep_alive = False
        conn.out.append(data)

    def response_body(self, data: bytes) -> None:
        if self.finished:
            return
        if self._held is not None:
            self._hold_body(data)
            return
        self.bytes_out += len(data)
        self.last_upstream_activity = self.conn.loop.time()
        self.conn.out.append(chunk(data) if self._chunked_out else data)

    def response_trailers(self, lines: list[bytes]) -> None:
        """Over HTTP/1.1 trailers are not relayed (few clients ask for them); HTTP/2 relays them. A held
        response, sent whole, carries them as header fields (gRPC's grpc-status for grpc_transcode)."""
        if self._held is not None:
            self._held[1].extend(lines)

    def response_complete(self, reusable: bool) -> None:
        if self.finished:
            return
        if self._held is not None:
            try:
                self._release_held()
            except HttpError as error:
                self._fail_held(error)
                return
            except Exception:
                log.exception("a response-body hook failed in route %s", self.route.name if self.route else "?")
                self._fail_held(HttpError())
                return
        self._send_end()
        upstream, target = self.upstream, self.target
        self.upstream = None
        if upstream is not None and target is not None:
            # A connection whose request body was not fully sent cannot carry another request.
            target.pool.release(upstream, reusable and self.upstream_body_done)
        self._end_try(ok=self.status < 500)
        self.finished = True
        self._end()
        self.conn.exchange_finished(self)

    def _send_end(self) -> None:
        """The response body is complete: end it to the client."""
        if self._chunked_out:
            self.conn.out.append(LAST_CHUNK)

    def upstream_failed(self, error: HttpError, response_started: bool) -> None:
        if self.finished:
            return
        upstream = self.upstream
        self.upstream = None
        if response_started and self._held is not None:  # nothing was sent: a clean 502 is still possible
            self._fail_held(error)
            return
        if response_started:
            # Mid-body: the client must see a truncated response and a closed connection, never a
            # complete-looking one.
            self._end_try(ok=False)
            self._cut()
            return
        if (isinstance(error, UpstreamReset) and upstream is not None and upstream.uses > 1
                and not self._stale_retried and self.upstream_body_done and self.body_bytes == 0
                and self.target is not None):
            # A pooled connection the upstream had just closed, before any byte of ours could be acted on:
            # resend once on a fresh connection. Not a retry: the request never reached the service.
            self._stale_retried = True
            self._task = self.conn.loop.create_task(self._connect_and_send(self.target))
            return
        # An HTTP/2 stream the upstream refused unprocessed fails as a connect error: safe to resend.
        failure = Failure.CONNECT if isinstance(error, UpstreamConnectError) else (
            Failure.RESET if isinstance(error, UpstreamReset) else Failure.PROTOCOL)
        self._try_failed(failure, error)

    def flush(self) -> None:
        self.conn.flush()

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.conn.pause_reading_for("upstream")
        else:
            self.conn.resume_reading_for("upstream")

    def client_write_paused(self, paused: bool) -> None:
        if self.upstream is not None:
            if paused:
                self.upstream.pause_reading()
            else:
                self.upstream.resume_reading()

    # --- endings ----------------------------------------------------------------------------------

    def send_reply(self, reply: Reply) -> None:
        self.conn.send_local(self, reply.status, reply.body, reply.headers, reply.content_type)

    def fail(self, error: HttpError) -> None:
        """End the exchange with a gateway error: a JSON reply if nothing was sent yet, else a cut."""
        if self.finished:
            return
        self._drop_upstream()
        if self.response_started:
            self._end_try(ok=False)
            self._cut()
            return
        self.conn.send_error(self, error)

    def _cut(self) -> None:
        self.finished = True
        self.cut = True
        self._end()
        self.conn.abort_exchange(self)

    def mark_local_reply_done(self, status: int) -> None:
        self.status = status
        self.finished = True
        self._end_try(ok=status < 500)
        self._end()
        if self._task is not None and not self._task.done() and asyncio.current_task() is not self._task:
            self._task.cancel()

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.detach()
            self.upstream = None

    def _end(self) -> None:
        """Release everything the exchange holds: timers, the try, its share of the upstream's budget."""
        self.deadline = _NEVER
        for handle in (self._try_timer, self._backoff):
            if handle is not None:
                handle.cancel()
        self._try_timer = self._backoff = None
        if self.target is not None:
            self._end_try(ok=False)
        if self._budget_held and self._cluster is not None:
            self._cluster.state.budget.release()
            self._budget_held = False
        if self._cluster is not None:
            self._cluster.state.budget.active_requests -= 1
            self._cluster = None
