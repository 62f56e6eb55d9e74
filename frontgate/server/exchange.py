"""One request through the gateway: plugins, then the upstream, with bodies streamed both ways.

The client connection feeds request events in (`request_body`, `request_complete`); the upstream
connection feeds response events in (the `ResponseReceiver` methods). Only the part that waits (plugins,
connecting) runs as a coroutine; relaying bytes happens in callbacks, with no task per chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from frontgate.config.compile import CompiledRoute, Runtime
from frontgate.errors import GatewayTimeout, HttpError, PayloadTooLarge
from frontgate.pipeline.context import Reply, RequestContext, RequestSummary, ResponseHead
from frontgate.protocol.http1 import (
    CONTINUE_100,
    HOP_BY_HOP,
    LAST_CHUNK,
    RequestFraming,
    chunk,
    header_tokens,
    status_line,
)
from frontgate.upstream.cluster import Target, UpstreamCluster
from frontgate.upstream.connection import UpstreamConnection, UpstreamReset

if TYPE_CHECKING:
    from frontgate.server.connection import HttpConnection

log = logging.getLogger("frontgate.exchange")

# Request body bytes held while the upstream connection is not ready yet; beyond this, stop reading.
BODY_BUFFER_HIGH_WATER = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class Exchange:
    __slots__ = (
        "_chunked_out",
        "_head",
        "_pending",
        "_pending_bytes",
        "_retried",
        "_task",
        "_timer",
        "body_bytes",
        "body_complete",
        "bytes_out",
        "conn",
        "ctx",
        "cut",
        "error",
        "finished",
        "framing",
        "head_only",
        "keep_alive",
        "last_upstream_activity",
        "max_body_bytes",
        "observed",
        "response_started",
        "route",
        "runtime",
        "status",
        "target",
        "target_url",
        "upstream",
        "upstream_body_done",
    )

    def __init__(
        self,
        conn: HttpConnection,
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
        has_body = framing.chunked or bool(framing.content_length)
        self.body_complete = not has_body
        self.body_bytes = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.upstream: UpstreamConnection | None = None
        self.upstream_body_done = not has_body
        self.target: Target | None = None
        self.target_url: str | None = None
        self.response_started = False
        self.finished = False
        self._chunked_out = False
        self.status = 0
        self.bytes_out = 0
        self._head = b""
        self._retried = False
        self._timer: asyncio.TimerHandle | None = None
        self.last_upstream_activity = 0.0
        self._task: asyncio.Task[None] | None = None
        self.cut = False  # the response was started and then cut off
        self.observed = False  # reported to the gateway's accounting (exactly once)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        route = self.route
        if route is None:
            self.fail(self.error or HttpError())
        elif route.request_hooks or self.framing.expect_continue:
            self._task = asyncio.get_running_loop().create_task(self._run(route))
        else:
            self._dispatch(route)  # nothing to await before the upstream: no task at all

    def abort(self) -> None:
        """The client went away or the connection is being torn down."""
        if not self.observed:
            self.conn.gateway.observe(self)
        self.finished = True
        self._cancel_timer()
        if self.upstream is not None:
            self.upstream.detach()
            self.upstream = None
        self._release_target()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self, route: CompiledRoute) -> None:
        try:
            for hook in route.request_hooks:
                reply = await hook(self.ctx)
                if self.gone():
                    return
                if reply is not None:
                    self.send_reply(reply)
                    return
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
            upstream.write(chunk(data) if self.framing.chunked else data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > BODY_BUFFER_HIGH_WATER:
            self.conn.pause_reading_for("body")

    def request_complete(self) -> None:
        self.body_complete = True
        if self.upstream is not None and not self._pending and not self.upstream_body_done:
            self._end_upstream_body(self.upstream)

    def _end_upstream_body(self, upstream: UpstreamConnection) -> None:
        if self.framing.chunked:
            upstream.write(LAST_CHUNK)
        self.upstream_body_done = True

    def _flush_pending(self, upstream: UpstreamConnection) -> None:
        if self._pending:
            chunked = self.framing.chunked
            upstream.write(b"".join(chunk(d) if chunked else d for d in self._pending))
            self._pending.clear()
            self._pending_bytes = 0
            self.conn.resume_reading_for("body")
        if self.body_complete and not self.upstream_body_done:
            self._end_upstream_body(upstream)

    # --- to the upstream --------------------------------------------------------------------------

    def _dispatch(self, route: CompiledRoute) -> None:
        """Pick the target and send on a pooled connection, or connect first (the only await)."""
        ctx = self.ctx
        key = route.sticky_key(ctx.headers, ctx.client_ip, ctx.claims) if route.sticky_key else None
        cluster = route.clusters[route.split.pick(key)]
        target = cluster.pick()
        self.target = target
        self.target_url = target.url
        target.pool.in_flight += 1
        self._head = self._upstream_head(cluster, target)
        loop = self.conn.loop
        self._timer = loop.call_later(route.timeout, self._on_timer)
        upstream = target.pool.take_idle()
        if upstream is not None:
            self._send(upstream)
        else:
            self._task = loop.create_task(self._connect_and_send(target))

    async def _connect_and_send(self, target: Target) -> None:
        try:
            upstream = await target.pool.connect()
        except HttpError as error:
            self.fail(error)
            return
        if self.gone():
            target.pool.release(upstream, True)  # a healthy new connection: keep it for the next request
            return
        self._send(upstream)

    def _send(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        upstream.start(self, self._head, self.head_only)
        self._flush_pending(upstream)

    def _retry_safe(self, upstream_was_reused: bool) -> bool:
        """A pooled connection the upstream had just closed: resend once on a fresh one, but only if no byte
        of the body went out with it (nothing can have been acted on twice)."""
        return upstream_was_reused and not self._retried and self.upstream_body_done and self.body_bytes == 0

    def _upstream_head(self, cluster: UpstreamCluster, target: Target) -> bytes:
        ctx = self.ctx
        target_bytes = ctx.upstream_path.encode("latin-1")
        if ctx.query:
            target_bytes += b"?" + ctx.query
        parts = [ctx.method.encode("ascii"), b" ", target_bytes, b" HTTP/1.1\r\nhost: "]
        host = self.framing.host if cluster.preserve_host and self.framing.host else target.host_header
        parts.append(host)
        parts.append(b"\r\n")
        for name, value in ctx.headers:
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
        if self.framing.chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif self.framing.content_length is not None:
            parts.append(b"content-length: %d\r\n" % self.framing.content_length)
        parts.append(b"\r\n")
        return b"".join(parts)

    def _on_timer(self) -> None:
        """One timer per request. Before the response head it is the route timeout (504); after it, it bounds
        each silence of the upstream (like nginx's proxy_read_timeout), re-armed lazily so a streaming body
        does not reschedule a timer per chunk."""
        self._timer = None
        if self.finished:
            return
        if not self.response_started:
            self.fail(GatewayTimeout())
            return
        loop = self.conn.loop
        assert self.route is not None
        idle = loop.time() - self.last_upstream_activity
        if idle >= self.route.timeout:
            self.fail(GatewayTimeout())  # the response started: this cuts the connection
        else:
            self._timer = loop.call_later(self.route.timeout - idle, self._on_timer)

    # --- ResponseReceiver -------------------------------------------------------------------------

    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool, content_length: int | None
    ) -> None:
        if self.finished:
            return
        self.response_started = True
        self.status = status
        self.last_upstream_activity = self.conn.loop.time()

        named = {t for n, v in headers if n == b"connection" for t in header_tokens(v)}
        kept = [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named and n != b"content-length"]
        head = ResponseHead(status, kept)
        assert self.route is not None
        for hook in self.route.response_hooks:
            hook(self.ctx, head)

        conn = self.conn
        close = not self.keep_alive or conn.draining
        parts = [status_line(head.status)]
        if not any(name == b"date" for name, _ in head.headers):
            parts.append(conn.gateway.date_line)  # RFC 9110 §6.6.1: a forwarded response gets a Date
        for name, value in head.headers:
            parts.append(name + b": " + value + b"\r\n")
        no_body = self.head_only or status in _NO_BODY_STATUS
        if content_length is not None and (not chunked):
            parts.append(b"content-length: %d\r\n" % content_length)
        elif not no_body:
            if self.ctx.http_version == "1.1":
                self._chunked_out = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                close = True  # an HTTP/1.0 client learns the end of the body from the close
        if close:
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
        elif self.ctx.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        conn.write(b"".join(parts))

    def response_body(self, data: bytes) -> None:
        if self.finished:
            return
        self.bytes_out += len(data)
        self.last_upstream_activity = self.conn.loop.time()
        self.conn.write(chunk(data) if self._chunked_out else data)

    def response_complete(self, reusable: bool) -> None:
        if self.finished:
            return
        if self._chunked_out:
            self.conn.write(LAST_CHUNK)
        upstream = self.upstream
        self.upstream = None
        if upstream is not None and self.target is not None:
            # A connection whose request body was not fully sent cannot carry another request.
            self.target.pool.release(upstream, reusable and self.upstream_body_done)
        self._finish()

    def upstream_failed(self, error: HttpError, response_started: bool) -> None:
        if self.finished:
            return
        upstream = self.upstream
        self.upstream = None
        if response_started:
            # Mid-body: the client must see a truncated response and a closed connection, never a
            # complete-looking one.
            self._release_target()
            self.finished = True
            self.cut = True
            self._cancel_timer()
            self.conn.abort_exchange(self)
            return
        reused = upstream is not None and upstream.uses > 1
        if isinstance(error, UpstreamReset) and self.target is not None and self._retry_safe(reused):
            self._retried = True
            self._task = self.conn.loop.create_task(self._connect_and_send(self.target))
            return
        self.fail(error)

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
        if self.upstream is not None:
            self.upstream.detach()
            self.upstream = None
        if self.response_started:
            self.finished = True
            self.cut = True
            self._cancel_timer()
            self._release_target()
            self.conn.abort_exchange(self)
            return
        self.conn.send_error(self, error)

    def _finish(self) -> None:
        self.finished = True
        self._cancel_timer()
        self._release_target()
        self.conn.exchange_finished(self)

    def mark_local_reply_done(self, status: int) -> None:
        self.status = status
        self.finished = True
        self._cancel_timer()
        self._release_target()
        if self._task is not None and not self._task.done() and asyncio.current_task() is not self._task:
            self._task.cancel()

    def _release_target(self) -> None:
        target = self.target
        if target is not None:
            self.target = None
            target.pool.in_flight -= 1

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
