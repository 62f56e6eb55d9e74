"""Health probes for HTTP/2 targets, each on its own short-lived HTTP/2 connection (as HTTP/1.1 probes are).

`protocol: http2`: a GET of `health_check.path`, healthy on an expected status. `protocol: grpc`: the
standard gRPC health protocol (grpc.health.v1.Health/Check for the whole server, service ""), healthy when
it answers SERVING; `path` and `expected_statuses` do not apply.
"""

from __future__ import annotations

import asyncio
import ssl

from frontgate.config.schema import HealthCheck
from frontgate.errors import HttpError
from frontgate.upstream.h2connection import H2UpstreamConnection
from frontgate.upstream.pool import PoolKey

_GRPC_CHECK = b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nhost: %s\r\ncontent-type: application/grpc\r\n" \
              b"user-agent: frontgate-health-check\r\ntransfer-encoding: chunked\r\n\r\n"
_EMPTY_REQUEST = b"\x00\x00\x00\x00\x00"  # one uncompressed, empty HealthCheckRequest: service "" (the server)
_SERVING = b"\x00\x00\x00\x00\x02\x08\x01"  # HealthCheckResponse{status: SERVING}, framed


class _ProbeReceiver:
    grpc_status: int | None = None

    def __init__(self, outcome: asyncio.Future[tuple[int, bytes]]) -> None:
        self.outcome = outcome
        self.status = 0
        self.body = bytearray()

    def response_head(self, status: int, lines: list[bytes], chunked: bool, content_length: int | None) -> None:
        self.status = status

    def response_body(self, data: bytes) -> None:
        if len(self.body) < 1024:  # a probe answer is small; never hold a large one
            self.body += data

    def response_trailers(self, lines: list[bytes]) -> None:
        pass

    def response_complete(self, reusable: bool) -> None:
        if not self.outcome.done():
            self.outcome.set_result((self.status, bytes(self.body)))

    def upstream_failed(self, error: HttpError, response_started: bool) -> None:
        if not self.outcome.done():
            self.outcome.set_result((0, b""))

    def upstream_write_paused(self, paused: bool) -> None:
        pass

    def flush(self) -> None:
        pass


async def probe_http2(key: PoolKey, host_header: bytes, check: HealthCheck) -> bool:
    """One probe: True when the target answered as healthy within the timeout."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[int, bytes]] = loop.create_future()
    receiver = _ProbeReceiver(outcome)
    host = check.host.encode() if check.host else host_header
    try:
        async with asyncio.timeout(check.timeout):
            transport, conn = await loop.create_connection(
                lambda: H2UpstreamConnection(b"https" if key.tls else b"http", key.grpc, lambda _: None),
                key.host, key.port, ssl=key.tls, server_hostname=key.server_hostname if key.tls else None,
            )
            try:
                ssl_object = transport.get_extra_info("ssl_object")
                if key.tls is not None and (ssl_object is None or ssl_object.selected_alpn_protocol() != "h2"):
                    return False
                stream = conn.open_stream()
                if key.grpc:
                    stream.start(receiver, _GRPC_CHECK % host, False, True)
                    stream.write(_EMPTY_REQUEST)
                    stream.end_body()
                else:
                    stream.start(receiver, b"GET %s HTTP/1.1\r\nhost: %s\r\nuser-agent: frontgate-health-check\r\n\r\n"
                                 % (check.path.encode(), host), False, False)
                status, body = await outcome
            finally:
                conn.close_gracefully()
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    if key.grpc:
        return receiver.grpc_status == 0 and body == _SERVING
    return status in check.expected_statuses
