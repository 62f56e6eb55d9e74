"""Per-request state. Plugins read and change it; nothing per-request ever lives on a plugin object."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frontgate.config.compile import CompiledRoute

# Request ids: a random per-process prefix and a counter. Unique across workers and restarts, and far
# cheaper than uuid4 on the hot path.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


@dataclass(slots=True)
class Reply:
    """A response a plugin (or the gateway) answers itself, without the upstream."""

    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"application/json"


class RequestContext:
    """What one request carries through the pipeline.

    `headers` are the request headers as they will be forwarded: (lowercase name, value) pairs. Plugins edit
    them in place. `upstream_path` starts as the normalised path and may be rewritten.
    """

    __slots__ = (
        "_request_id",
        "claims",
        "client_ip",
        "consumer",
        "headers",
        "host",
        "http_version",
        "method",
        "path",
        "peer_ip",
        "query",
        "response_headers_add",
        "route",
        "scheme",
        "started",
        "state",
        "upstream_path",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        host: str,
        client_ip: str,
        peer_ip: str,
        scheme: str,
        http_version: str,
    ) -> None:
        self.method = method
        self.path = path
        self.upstream_path = path
        self.query = query
        self.headers = headers
        self.host = host
        self.client_ip = client_ip
        self.peer_ip = peer_ip
        self.scheme = scheme
        self.http_version = http_version
        self.route: CompiledRoute | None = None
        self.consumer: str | None = None
        self.claims: dict[str, Any] | None = None
        self.response_headers_add: list[tuple[bytes, bytes]] | None = None
        self.state: dict[str, Any] | None = None
        self.started = time.monotonic()
        self._request_id: str | None = None

    @property
    def request_id(self) -> str:
        """Made on first use: most requests without the request_id plugin never need one."""
        if self._request_id is None:
            self._request_id = new_request_id()
        return self._request_id

    @request_id.setter
    def request_id(self, value: str) -> None:
        self._request_id = value

    def header(self, name: bytes) -> bytes | None:
        """First value of a request header; `name` must be lowercase."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def remove_header(self, name: bytes) -> None:
        self.headers[:] = [(k, v) for k, v in self.headers if k != name]

    def set_header(self, name: bytes, value: bytes) -> None:
        self.remove_header(name)
        self.headers.append((name, value))


class ResponseHead:
    """The upstream's status and headers (lowercase names) before they are written to the client."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers


@dataclass(slots=True)
class RequestSummary:
    """What happened to a request, handed to `on_log` hooks once it is over (answered, cut or abandoned)."""

    status: int  # 0 when the client left before any answer
    bytes_in: int
    bytes_out: int
    duration: float  # seconds since the head was parsed
    upstream: str | None  # the target URL of the last try, when one was chosen
    completed: bool  # False when the response was cut or never sent
    attempts: int = 0  # upstream tries; more than 1 means retries
