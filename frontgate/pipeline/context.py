"""Per-request state. Plugins read and change it; nothing per-request ever lives on a plugin object."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from frontgate.protocol.http1 import split_lines

if TYPE_CHECKING:
    from frontgate.config.compile import CompiledRoute
    from frontgate.observability.tracing import Trace
    from frontgate.tls.client_cert import ClientCertificate

# Request ids: a random per-process prefix and a counter. Unique across workers and restarts, and far
# cheaper than uuid4 on the hot path.
_ID_FORMAT = os.urandom(6).hex() + "%010x"  # %-formatting one int: cheaper than an f-string with a spec
_ID_COUNTER = itertools.count(1)


# Ids made in bulk (`new_request_ids`), of the same shape under a prefix of their own: the prefix, then the
# counter's high digits (`_block_head`, made once per 4,096 ids), then its last three from a table.
_BLOCK_PREFIX = os.urandom(6).hex()
_block_next = 0
_LOW_DIGITS = tuple(f"{low:03x}" for low in range(4096))


def new_request_id() -> str:
    return _ID_FORMAT % next(_ID_COUNTER)


def new_request_ids(count: int) -> list[str]:
    """`count` fresh ids at once, for the access log's requests that never needed one: a concatenation per
    id instead of formatting a number (which cost a quarter of a log line)."""
    global _block_next
    ids: list[str] = []
    first = _block_next
    end = _block_next = first + count
    while first < end:
        head = _BLOCK_PREFIX + "%07x" % (first >> 12)
        stop = min(end, (first | 4095) + 1)  # where the high digits change
        ids += [head + low for low in _LOW_DIGITS[first & 4095:(stop - 1 & 4095) + 1]]
        first = stop
    return ids


def _new_id_prefix() -> None:
    """Workers are forked after this module is imported: each needs a prefix of its own."""
    global _ID_FORMAT, _ID_COUNTER, _BLOCK_PREFIX, _block_next
    _ID_FORMAT = os.urandom(6).hex() + "%010x"
    _ID_COUNTER = itertools.count(1)
    _BLOCK_PREFIX = os.urandom(6).hex()
    _block_next = 0


os.register_at_fork(after_in_child=_new_id_prefix)


@dataclass(slots=True)
class Reply:
    """A response a plugin (or the gateway) answers itself, without the upstream."""

    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes | None = b"application/json"  # None: `headers` carry it (or there is none)


# A request hook answers at once (None: go on; a Reply: answer with it) or, when it must wait for something
# (a JWKS fetch, a Redis round trip), returns an awaitable of that answer. Most requests meet only hooks that
# answer at once, and then no coroutine is made at all.
HookResult = Reply | None | Awaitable[Reply | None]
RequestHook = Callable[["RequestContext"], HookResult]


async def settled(result: HookResult) -> Reply | None:
    """A hook's answer, once it is there."""
    return result if result is None or isinstance(result, Reply) else await result


class RequestContext:
    """What one request carries through the pipeline.

    `headers` are the request headers as they will be forwarded: (lowercase name, value) pairs. Plugins edit
    them in place. `upstream_path` starts as the normalised path and may be rewritten.

    The connection hands the headers over as ready-made `name: value\r\n` lines; the pairs are made from
    them only when something asks for `headers`, so a request no plugin looks at is forwarded without
    taking its headers apart and putting them back together.
    """

    # Defaults at class level: __init__, run for every request, sets only what differs per request.
    route: CompiledRoute | None = None
    consumer: str | None = None
    claims: dict[str, Any] | None = None
    # The verified client certificate of the connection (mTLS listeners only), parsed once per connection.
    client_cert: ClientCertificate | None = None
    # Header lines (`name: value\r\n`, lowercase names) for whatever response this request gets, the
    # upstream's or the gateway's own (a 429 too), set by a request hook: cheaper than an on_response hook
    # for a plugin that only adds fields, and written as they are. The list may be shared by requests:
    # replace it, never edit it.
    response_lines_add: list[bytes] | None = None
    state: dict[str, Any] | None = None
    # The rate_limit plugin's decision, (its Applicable, its Verdict), for the access log: an attribute, not
    # a `state` entry, because it is set on every limited request (no dict to make).
    rate_limit: tuple[Any, Any] | None = None
    # The id, once something asked for it (`request_id`); the access log makes one for a request without.
    request_id_made: str | None = None
    # Observability (frontgate/observability/): the trace context when tracing is on, and when metrics,
    # traces or the access log are on, each upstream try as [cluster, target, started, ended, ok].
    trace: Trace | bytes | None = None  # bytes: the traceparent line of an unsampled trace's first try
    # False when the headers surely hold no traceparent or tracestate (the HTTP/1.1 parser saw none, and no
    # plugin has replaced the headers since): the tracer and the access log then skip looking for them.
    trace_context = True
    tries: list[list[Any]] | None = None
    # Set by a request hook that wants this request's response whole (the cache, on a miss): the route's
    # response-body hooks then get it, when it is not larger than their limit.
    hold_response = False

    def __init__(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]] | None,
        host: str,
        client_ip: str,
        peer_ip: str,
        scheme: str,
        http_version: str,
        header_lines: list[bytes] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.upstream_path = path
        self.upstream_method: str | None = None  # a plugin sends the request upstream with another method
        self.query = query
        self._headers: list[tuple[bytes, bytes]] | None = headers
        self._header_lines = header_lines
        self.host = host
        self.client_ip = client_ip
        self.peer_ip = peer_ip
        self.scheme = scheme
        self.http_version = http_version
        self.started = time.monotonic()
        self.trace = None  # also a class default, which the mypyc build leaves unset (see setup.py)

    @property
    def request_id(self) -> str:
        """Made on first use: most requests without the request_id plugin never need one."""
        if self.request_id_made is None:
            self.request_id_made = new_request_id()
        return self.request_id_made

    @request_id.setter
    def request_id(self, value: str) -> None:
        self.request_id_made = value

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = self._headers
        if headers is None:
            headers = self._headers = split_lines(self._header_lines or [])
            self._header_lines = None
            self.trace_context = True  # the pairs may be edited in place from here on
        return headers

    @headers.setter
    def headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers = headers
        self._header_lines = None
        self.trace_context = True

    def header_lines(self) -> list[bytes]:
        """The headers as `name: value\r\n` lines, ready to write."""
        lines = self._header_lines
        if lines is None:
            lines = [name + b": " + value + b"\r\n" for name, value in self.headers]
        return lines

    def set_header_lines(self, lines: list[bytes]) -> None:
        """Replace all headers with ready-made `name: value\r\n` lines (lowercase names), so a plugin can
        drop or add headers without the pairs ever being built (the auth plugins do, on every request)."""
        self._header_lines = lines
        self.trace_context = True
        self._headers = None

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
    """The status and headers (lowercase names) of a response before they are written to the client.

    Hooks that only add or replace a field should call `add` / `set`: the upstream's own headers then stay
    ready-made lines and are never taken apart. Reading or assigning `headers` gives the full pairs.
    """

    __slots__ = ("_added", "_dropped", "_headers", "_lines", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]] | None = None,
                 lines: list[bytes] | None = None) -> None:
        self.status = status
        self._headers = headers
        self._lines = lines if headers is None else None
        self._added: list[tuple[bytes, bytes]] = []
        self._dropped: set[bytes] = set()

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        if self._headers is None:
            pairs = [p for p in split_lines(self._lines or []) if p[0] not in self._dropped]
            pairs += self._added
            self._headers, self._lines, self._added = pairs, None, []
        return self._headers

    @headers.setter
    def headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers, self._lines, self._added = headers, None, []

    def add(self, name: bytes, value: bytes) -> None:
        if self._headers is not None:
            self._headers.append((name, value))
        else:
            self._added.append((name, value))

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every copy of `name` (lowercase) with this one value."""
        if self._headers is not None:
            self._headers[:] = [(k, v) for k, v in self._headers if k != name]
            self._headers.append((name, value))
        else:
            self._dropped.add(name)
            self._added = [(k, v) for k, v in self._added if k != name]
            self._added.append((name, value))

    def remove(self, name: bytes) -> None:
        """Drop every copy of `name` (lowercase)."""
        if self._headers is not None:
            self._headers[:] = [(k, v) for k, v in self._headers if k != name]
        else:
            self._dropped.add(name)
            self._added = [(k, v) for k, v in self._added if k != name]

    def lines(self) -> list[bytes]:
        """The headers as `name: value\r\n` lines, ready to write."""
        if self._headers is not None:
            return [name + b": " + value + b"\r\n" for name, value in self._headers]
        lines = self._lines or []
        if self._dropped:
            lines = [line for line in lines if line[: line.index(b":")] not in self._dropped]
        for name, value in self._added:
            lines.append(name + b": " + value + b"\r\n")
        return lines

    def has_date(self, upstream_had_date: bool) -> bool:
        """Does the response carry a Date? Answered without taking the upstream's lines apart."""
        if self._headers is None and b"date" not in self._dropped:
            return upstream_had_date or any(k == b"date" for k, _ in self._added)
        return self.has(b"date")

    def has(self, name: bytes) -> bool:
        if self._headers is not None:
            return any(k == name for k, _ in self._headers)
        if name in self._dropped:
            return any(k == name for k, _ in self._added)
        prefix = name + b":"
        return any(line.startswith(prefix) for line in self._lines or []) or any(k == name for k, _ in self._added)


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
