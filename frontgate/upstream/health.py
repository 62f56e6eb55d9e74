"""Active health checks: each target with a `health_check` is probed with a GET every `interval`, on its
own short-lived connection (a probe must not ride on, or spoil, a pooled connection). `unhealthy_after`
failures in a row take a target out of every balancer; `healthy_after` successes put it back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from frontgate.config.schema import HealthCheck
from frontgate.upstream.cluster import Target, UpstreamCluster
from frontgate.upstream.h2_health import probe_http2
from frontgate.upstream.tls import handshake_failure

log = logging.getLogger("frontgate.upstream")


async def probe(target: Target, check: HealthCheck, tls: ssl.SSLContext | None) -> bool:
    """One probe: True when the target answered an expected status within the timeout."""
    if target.pool.key.http2:
        return await probe_http2(target.pool.key, target.host_header, check)
    try:
        async with asyncio.timeout(check.timeout):
            # The same context and name as the pool's connections: a probe verifies what requests verify.
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=tls, server_hostname=target.pool.key.server_hostname if tls else None
            )
            try:
                host = check.host.encode() if check.host else target.host_header
                writer.write(b"GET " + check.path.encode() + b" HTTP/1.1\r\nhost: " + host
                             + b"\r\nuser-agent: frontgate-health-check\r\nconnection: close\r\n\r\n")
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except ssl.SSLError as exc:
        log.warning("health check of %s: %s", target.state.name, handshake_failure(exc))
        return False
    except (OSError, TimeoutError):
        return False
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False
    return int(parts[1]) in check.expected_statuses


def apply_result(target: Target, check: HealthCheck, ok: bool) -> None:
    state = target.state
    if ok:
        state.probe_failures = 0
        state.probe_successes += 1
        if not state.healthy and state.probe_successes >= check.healthy_after:
            state.healthy = True
            log.warning("target %s is healthy again", state.name)
    else:
        state.probe_successes = 0
        state.probe_failures += 1
        if state.healthy and state.probe_failures >= check.unhealthy_after:
            state.healthy = False
            log.warning("target %s failed %d health checks: taken out", state.name, state.probe_failures)


class HealthChecker:
    """The probing tasks of one config generation; `stop()` when the generation is replaced."""

    def __init__(self, clusters: list[UpstreamCluster]) -> None:
        self._clusters = [c for c in clusters if c.config.health_check is not None]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for cluster in self._clusters:
            check = cluster.config.health_check
            assert check is not None
            for target in cluster.targets:
                self._tasks.append(asyncio.get_running_loop().create_task(self._run(target, check)))

    async def _run(self, target: Target, check: HealthCheck) -> None:
        tls = target.pool.key.tls
        while True:
            apply_result(target, check, await probe(target, check, tls))
            await asyncio.sleep(check.interval)

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
