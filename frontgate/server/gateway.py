"""One worker's gateway: its listeners, the current Runtime snapshot, reload and graceful drain."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from frontgate.config.compile import Runtime, compile_runtime
from frontgate.config.loader import load_config
from frontgate.config.locations import format_path
from frontgate.config.schema import Listener
from frontgate.errors import ConfigError
from frontgate.observability.access_log import AccessLog
from frontgate.observability.batch import Observations
from frontgate.observability.metrics import RequestMetrics
from frontgate.observability.tracing import Tracer
from frontgate.plugins import plugin_models
from frontgate.protocol.http1 import date_line
from frontgate.server.tls import CertificateSelector, TlsListener, reload_problems
from frontgate.upstream.cluster import UpstreamRegistry
from frontgate.upstream.health import HealthChecker

if TYPE_CHECKING:
    from frontgate.server.exchange import Exchange
    from frontgate.server.tunnel import Tunnel

log = logging.getLogger("frontgate")

_TICK = 0.1  # seconds between deadline sweeps


class ClientConnection(Protocol):
    """What the gateway's sweeper and shutdown need of a client connection (HTTP/1.1 or HTTP/2)."""

    @property
    def active(self) -> Exchange | None: ...
    wait_deadline: float

    def check_deadlines(self, now: float) -> None: ...
    def drain(self) -> None: ...
    def close(self) -> None: ...


def bind_socket(address: str, reuse_port: bool) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        # Several worker processes bind the same port; the kernel spreads connections between them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    sock.setblocking(False)
    return sock


class Gateway:
    def __init__(self, config_paths: Sequence[str], runtime: Runtime, pools: UpstreamRegistry,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.config_paths = list(config_paths)
        self.runtime = runtime
        self.pools = pools
        self.loop = loop
        self.connections: set[ClientConnection] = set()
        self.tunnels: set[Tunnel] = set()  # WebSocket connections past their 101 (no longer HTTP connections)
        self.draining = False
        self.started = time.time()
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error: str | None = None
        self.protocol_errors = 0
        self.requests = 0
        self._servers: list[asyncio.Server] = []
        self.date_line = date_line(time.time())
        self._last_second = 0
        self.access_log = AccessLog.from_config(runtime.config.observability.access_log)
        observability = runtime.config.observability
        # Counted only when someone can read the numbers: /metrics lives on the admin listener.
        self.metrics = RequestMetrics() if observability.metrics.prometheus and runtime.config.admin else None
        self.tracer = Tracer.from_config(observability.tracing)
        self._observe_with_current()
        self.health = HealthChecker(list(runtime.clusters.values()))

    @classmethod
    def from_files(cls, config_paths: Sequence[str], loop: asyncio.AbstractEventLoop) -> Gateway:
        loaded = load_config(list(config_paths), plugin_models=plugin_models())
        pools = UpstreamRegistry()
        return cls(config_paths, compile_runtime(loaded, pools, 1), pools, loop)

    def _tick(self) -> None:
        """Every 100 ms: expire what is overdue. Connections and exchanges only stamp deadlines, so the hot
        path never schedules or cancels a timer; timeouts are therefore precise to about 0.1 s."""
        loop = self.loop
        now = loop.time()
        for conn in tuple(self.connections):
            exchange = conn.active
            if conn.wait_deadline <= now or (exchange is not None and exchange.deadline <= now):
                conn.check_deadlines(now)
        wall = time.time()
        if int(wall) != self._last_second:
            self._last_second = int(wall)
            self.date_line = date_line(wall)  # the Date header, formatted once a second
            self.pools.expire_idle(time.monotonic())
            for tunnel in tuple(self.tunnels):  # idle timeouts are minutes: once a second is plenty
                tunnel.check(now)
        loop.call_at(now + _TICK, self._tick)

    async def start(self, reuse_port: bool) -> None:
        """Start plugins (store connections, key fetchers) and health checks first, then listen: the first
        request already meets a ready gateway."""
        self._tick()
        for plugin in self.runtime.plugins():
            await plugin.startup()
        self.health.start()
        for listener in self.runtime.config.server.listen:
            sock = bind_socket(listener.address, reuse_port)
            ssl_context = None
            if listener.tls is not None:
                tls = TlsListener(functools.partial(self.listener_certificates, listener.address))
                ssl_context = tls.context
            server = await self.loop.create_server(
                self._protocol_factory(listener), sock=sock, ssl=ssl_context, backlog=2048,
                # A handshake gets the time a request head gets (asyncio's default would be 60 s).
                ssl_handshake_timeout=self.runtime.config.server.timeouts.read_header if ssl_context else None,
            )
            self._servers.append(server)

    def _protocol_factory(self, listener: Listener) -> Callable[[], asyncio.Protocol]:
        """HTTP/1.1 unless the listener offers HTTP/2 (by ALPN over TLS, or by prior knowledge in clear)."""
        from frontgate.server.connection import HttpConnection
        from frontgate.server.negotiate import AlpnSwitch, PriorKnowledgeSniffer
        from frontgate.server.tls_connection import TlsConnection

        if listener.tls is not None:
            if listener.tls.http2:
                return lambda: AlpnSwitch(self, "https")
            return lambda: TlsConnection(self, "https")
        if listener.h2c:
            return lambda: PriorKnowledgeSniffer(self)
        return lambda: HttpConnection(self, "http")

    def listener_certificates(self, address: str) -> CertificateSelector | None:
        """The current generation's certificates of the TLS listener on `address`."""
        return self.runtime.listener_certificates.get(address)

    # --- reload -----------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the files, compile aside, swap. A bad file changes nothing; the error is logged."""
        try:
            loaded = load_config(self.config_paths, plugin_models=plugin_models())
            refused = reload_problems(self.runtime.config.server, loaded.config.server)
            if refused:
                raise ConfigError([loaded.problem(format_path(path), message) for path, message in refused])
            runtime = compile_runtime(loaded, self.pools, self.runtime.generation + 1)
            for plugin in runtime.plugins():
                await plugin.startup()
        except ConfigError as error:
            self.reloads_failed += 1
            self.last_reload_error = str(error)
            log.error("reload rejected, still serving generation %d:\n%s", self.runtime.generation, error)
            return False
        except Exception as error:  # a compile bug must not take the running config down
            self.reloads_failed += 1
            self.last_reload_error = f"{type(error).__name__}: {error}"
            log.exception("reload failed, still serving generation %d", self.runtime.generation)
            return False
        old = self.runtime
        self.runtime = runtime
        self.health.stop()  # health state lives on in the registry; the new generation probes from here
        self.health = HealthChecker(list(runtime.clusters.values()))
        self.health.start()
        self.reloads_ok += 1
        self.last_reload_error = None
        log.info("reloaded: generation %d, %d routes", runtime.generation, len(runtime.routes))
        self.pools.retain_only(runtime.pool_keys())
        self._reconfigure_observability(old)
        self.loop.create_task(self._retire(old))
        return True

    def _observe_with_current(self) -> None:
        # Exchanges note each upstream try (target, times, outcome) only when one of these will read it.
        self.record_tries = self.metrics is not None or self.tracer is not None or self.access_log.enabled
        self.observations = Observations(self.loop, self.metrics, self.tracer, self.access_log)

    def _reconfigure_observability(self, old: Runtime) -> None:
        """A reload re-reads `observability`: what changed is rebuilt (requests already finished are
        counted and logged under the old settings first); metrics keep counting across reloads."""
        config, before = self.runtime.config, old.config
        if config.observability == before.observability and bool(config.admin) == bool(before.admin):
            return
        self.observations.flush()
        settings = config.observability
        if settings.access_log != before.observability.access_log:
            retired_log, self.access_log = self.access_log, AccessLog.from_config(settings.access_log)
            self.loop.run_in_executor(None, retired_log.close)  # joins its writer thread: off the loop
        if not (settings.metrics.prometheus and config.admin):
            self.metrics = None
        elif self.metrics is None:
            self.metrics = RequestMetrics()
        if settings.tracing != before.observability.tracing:
            retired_tracer, self.tracer = self.tracer, Tracer.from_config(settings.tracing)
            if retired_tracer is not None:
                self.loop.run_in_executor(None, retired_tracer.close)  # sends what it queued
        self._observe_with_current()
        log.info("observability settings changed: access log %s, metrics %s, tracing %s",
                 "on" if self.access_log.enabled else "off", "on" if self.metrics else "off",
                 "on" if self.tracer else "off")

    async def _retire(self, old: Runtime) -> None:
        # Requests that began on the old generation keep its plugins; give them the drain time to finish.
        await asyncio.sleep(old.config.server.timeouts.drain)
        for plugin in old.plugins():
            await plugin.shutdown()

    # --- shutdown ---------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish within `timeouts.drain`, then close the rest (open
        WebSockets too: they are given the drain time to end on their own)."""
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = self.loop.time() + self.runtime.config.server.timeouts.drain
        while (self.connections or any(not t.ended for t in self.tunnels)) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        for tunnel in list(self.tunnels):
            tunnel.end()
        self.health.stop()
        self.pools.close_all()
        for plugin in self.runtime.plugins():
            await plugin.shutdown()
        self.observations.flush()
        self.access_log.close()
        if self.tracer is not None:
            self.tracer.close()

    # --- accounting -------------------------------------------------------------------------------

    def observe(self, exchange: Exchange) -> None:
        """Called once per exchange, however it ended."""
        if exchange.observed:
            return
        exchange.observed = True
        self.requests += 1
        route = exchange.route
        if route is not None and route.log_hooks:
            summary = exchange.summary()
            for hook in route.log_hooks:
                try:
                    hook(exchange.ctx, summary)
                except Exception:
                    log.exception("on_log hook failed in route %s", route.name)
        if self.record_tries:
            self.observations.add(exchange)  # counted, traced and logged in batches

    def count_protocol_error(self, status: int) -> None:
        self.protocol_errors += 1
