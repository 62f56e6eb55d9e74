"""The admin listener (loopback by default, never the public port): health, readiness, status, routes and
the running config (secrets redacted) as JSON; with `observability.metrics.prometheus` (the default) also
/metrics (Prometheus text), /dashboard (a live web page) and /dashboard/data (the JSON it polls).

Requests here are few and trusted, so this uses asyncio streams rather than the proxy's hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from frontgate.admin.dashboard import dashboard_data
from frontgate.admin.dashboard_page import DASHBOARD_HTML
from frontgate.admin.redact import redacted_config
from frontgate.observability.families import render_prometheus
from frontgate.observability.sharing import gateway_families
from frontgate.server.gateway import Gateway, bind_socket
from frontgate.upstream.cluster import Target, UpstreamCluster

_MAX_HEAD = 8192
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Page:
    """An answer that is not JSON: the Prometheus text, the dashboard's HTML."""

    payload: bytes
    content_type: str


class AdminServer:
    def __init__(self, gateway: Gateway, worker: int, workers: int) -> None:
        self.gateway = gateway
        self.worker = worker
        self.workers = workers
        self._server: asyncio.Server | None = None

    async def start(self, address: str) -> None:
        sock = bind_socket(address, reuse_port=False)
        self._server = await asyncio.start_server(self._handle, sock=sock)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        method, target = [*request_line, "", ""][:2]
        path = target.split("?", 1)[0]
        status, body = self._answer(method, path)
        if isinstance(body, Page):
            payload, content_type = body.payload, body.content_type
        else:
            payload, content_type = json.dumps(body, indent=2).encode() + b"\n", "application/json"
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(payload)}\r\n"
            "connection: close\r\ncache-control: no-store\r\n\r\n".encode() + payload
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _answer(self, method: str, path: str) -> tuple[str, Any]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", {"error": "method_not_allowed"}
        gateway = self.gateway
        if path == "/healthz":
            return "200 OK", {"status": "ok"}
        if path == "/readyz":
            if gateway.draining:
                return "503 Service Unavailable", {"status": "draining"}
            return "200 OK", {"status": "ready", "generation": gateway.runtime.generation}
        if path == "/status":
            return "200 OK", self._status()
        if path == "/routes":
            return "200 OK", [row for row in gateway.runtime.router.table()]
        if path == "/config":
            return "200 OK", redacted_config(gateway.runtime.config)
        if path in ("/metrics", "/dashboard", "/dashboard/data") and gateway.metrics is not None:
            if path == "/dashboard":
                return "200 OK", Page(DASHBOARD_HTML, "text/html; charset=utf-8")
            families = gateway_families(gateway)
            if path == "/dashboard/data":
                return "200 OK", dashboard_data(families)
            return "200 OK", Page(render_prometheus(families), PROMETHEUS_TEXT)
        paths = ["/healthz", "/readyz", "/status", "/routes", "/config"]
        if gateway.metrics is not None:
            paths += ["/metrics", "/dashboard", "/dashboard/data"]
        return "404 Not Found", {"error": "not_found", "paths": paths}

    def _status(self) -> dict[str, Any]:
        gateway = self.gateway
        runtime = gateway.runtime
        return {
            "pid": os.getpid(),
            "worker": self.worker,
            "workers": self.workers,
            "generation": runtime.generation,
            "config_files": runtime.sources,
            "draining": gateway.draining,
            "connections": len(gateway.connections),
            "websockets": sum(1 for tunnel in gateway.tunnels if not tunnel.ended),
            "requests": gateway.requests,
            "reloads": {"ok": gateway.reloads_ok, "failed": gateway.reloads_failed,
                        "last_error": gateway.last_reload_error},
            "routes": [r.name for r in runtime.routes],
            "upstreams": {name: _upstream_status(cluster) for name, cluster in runtime.clusters.items()},
        }


def _upstream_status(cluster: UpstreamCluster) -> dict[str, Any]:
    state = cluster.state
    return {
        "balance": cluster.config.balance,
        "in_flight": state.in_flight,
        "breaker": state.breaker.state.value,
        "breaker_rejections": state.breaker.rejections,
        "retries": state.budget.retries,
        "retry_budget_exhausted": state.budget.exhausted,
        "targets": [_target_status(t) for t in cluster.targets],
    }


def _target_status(target: Target) -> dict[str, Any]:
    state = target.state
    outlier = state.outlier
    return {
        "url": target.url,
        "weight": target.weight,
        "available": state.available(),
        "healthy": state.healthy,
        "ejected": bool(outlier and outlier.ejected()),
        "ejections": outlier.ejections if outlier else 0,
        "breaker": state.breaker.state.value,
        "breaker_rejections": state.breaker.rejections,
        "in_flight": target.pool.in_flight,
        "idle_connections": target.pool.idle_count,
        "requests": state.requests,
        "failures": state.failures,
    }
