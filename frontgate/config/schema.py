"""The configuration file's shape (SPEC §2). Unknown fields are errors everywhere (`extra="forbid"`).

Plugin configs are not listed here: each plugin module owns its `Config` model, and `plugins:` maps are
checked against the plugin registry by the loader, so a new plugin never has to touch this file.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from frontgate.tls.subjects import normalize_subject
from frontgate.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written `250ms`, `2s`, `1m`, `1h`."""

Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes, written `16KiB`, `10MiB`."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"invalid address {value!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    return value


Address = Annotated[str, BeforeValidator(lambda v: _check_address(str(v)) if isinstance(v, str | int) else v)]


# --- server -------------------------------------------------------------------------------------------


class TlsCertificate(Model):
    cert: str = Field(description="PEM certificate chain file.")
    key: str = Field(description="PEM private key file.")


class ListenerTls(Model):
    certificates: list[TlsCertificate] = Field(
        min_length=1, description="Chosen by SNI against each certificate's DNS names; the first is the default."
    )
    client_ca: str | None = Field(None, description="CA bundle for client certificates (mTLS); asks for one.")
    client_cert: Literal["optional", "required"] = Field(
        "optional", description="required: no handshake without a certificate; optional: unauthenticated."
    )
    http2: bool = Field(False, description="Offer h2 by ALPN.")

    @model_validator(mode="after")
    def _client_cert_needs_ca(self) -> ListenerTls:
        if self.client_cert == "required" and self.client_ca is None:
            raise ValueError("client_cert: required needs client_ca, the CA bundle client certificates are "
                             "verified against")
        return self


class Listener(Model):
    address: Address = Field(description="HOST:PORT to listen on.")
    tls: ListenerTls | None = None
    h2c: bool = Field(False, description="Also serve cleartext HTTP/2 with prior knowledge (no TLS listener).")

    @model_validator(mode="after")
    def _h2c_is_cleartext(self) -> Listener:
        if self.h2c and self.tls is not None:
            raise ValueError("h2c is for cleartext listeners; over TLS set tls.http2: true")
        return self


class Limits(Model):
    # 16 KiB matches what most proxies allow for a request head (nginx: 4 x 8k large buffers).
    max_header_bytes: Size = Field(16 * 1024, gt=0, description="Request line plus headers; 431 beyond.")
    max_headers: int = Field(100, gt=0, description="Number of header fields; 431 beyond.")
    # 8 KiB request targets: RFC 9112 recommends supporting at least 8000 octets.
    max_uri_bytes: Size = Field(8 * 1024, gt=0, description="Request target length; 414 beyond.")
    max_body_bytes: Size = Field(10 * 1024 * 1024, ge=0, description="Request body; 413 beyond.")
    max_connections: int = Field(10000, gt=0, description="Open client connections per worker.")


class ServerTimeouts(Model):
    read_header: Duration = Field(10.0, gt=0, description="Time to receive a request head; 408 beyond.")
    idle: Duration = Field(60.0, gt=0, description="Keep-alive idle time before the gateway closes.")
    drain: Duration = Field(30.0, ge=0, description="On SIGTERM, time given to in-flight requests.")
    read_body: Duration = Field(60.0, gt=0, description="Longest gap between two chunks of a request body.")


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"invalid network {value!r}: expected an IP address or CIDR such as 10.0.0.0/8") from exc
    return value


class Server(Model):
    listen: list[Listener] = Field(default_factory=lambda: [Listener(address="0.0.0.0:8080")], min_length=1)
    workers: int | Literal["auto"] = "auto"
    trusted_proxies: list[Annotated[str, BeforeValidator(lambda v: _check_network(str(v)))]] = []
    limits: Limits = Limits()
    timeouts: ServerTimeouts = ServerTimeouts()
    pid_file: str | None = Field(None, description="Where `run` writes its pid, for `frontgate reload`.")

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("workers must be at least 1 (or auto)")
        return value


class Admin(Model):
    listen: Address = "127.0.0.1:9901"


# --- upstreams ----------------------------------------------------------------------------------------


def _check_target(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"invalid target {value!r}: expected http://HOST:PORT or https://HOST:PORT")
    if not parts.hostname:
        raise ValueError(f"invalid target {value!r}: no host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"invalid target {value!r}: bad port") from exc
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"invalid target {value!r}: a target has no path; use the rewrite plugin")
    return value


Target = Annotated[str, BeforeValidator(lambda v: _check_target(str(v)) if isinstance(v, str) else v)]


class WeightedTarget(Model):
    url: Target
    weight: int = Field(1, ge=0)


class Pool(Model):
    max_idle: int = Field(64, ge=0, description="Idle keep-alive connections kept per target.")
    idle_timeout: Duration = Field(60.0, gt=0, description="An idle upstream connection is closed after this.")
    connect_timeout: Duration = Field(5.0, gt=0, description="TCP (and TLS) connect time; 502/503 beyond.")


class UpstreamTls(Model):
    ca: str | None = Field(None, description="CA bundle to verify the upstream; the system store when absent.")
    cert: str | None = Field(None, description="The gateway's client certificate chain (mTLS to the upstream).")
    key: str | None = Field(None, description="The private key of `cert`.")
    server_name: str | None = Field(None, description="SNI and name to verify; the target host by default.")
    verify: bool = Field(True, description="false: no verification at all (tests only).")

    @model_validator(mode="after")
    def _cert_with_key(self) -> UpstreamTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: set both or neither")
        return self


def _check_ratio(value: object) -> object:
    """`50%` or 0.5."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100
    return value


Ratio = Annotated[float, BeforeValidator(_check_ratio), Field(ge=0, le=1)]


class HealthCheck(Model):
    path: str = Field("/healthz", description="GET this path on every target.")
    interval: Duration = Field(5.0, gt=0)
    timeout: Duration = Field(2.0, gt=0)
    unhealthy_after: int = Field(3, ge=1, description="Failed probes in a row before a target is taken out.")
    healthy_after: int = Field(2, ge=1, description="Good probes in a row before it is put back.")
    expected_statuses: list[int] = Field(default_factory=lambda: list(range(200, 400)))
    host: str | None = Field(None, description="Host header for probes; the target's own by default.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _check_path(value)


class Outlier(Model):
    consecutive_failures: int = Field(5, ge=1)
    failure_ratio: Ratio | None = Field(None, description="Also eject when this share of requests fails.")
    min_requests: int = Field(20, ge=1, description="Requests in the window before failure_ratio applies.")
    window: Duration = Field(10.0, gt=0, description="The window failure_ratio is measured over.")
    eject_for: Duration = Field(30.0, gt=0, description="Base ejection time; it grows with each repeat.")
    max_ejected: Ratio = Field(0.5, description="Never eject more than this share of the targets.")


class CircuitBreaker(Model):
    max_in_flight: int = Field(1000, ge=1, description="Beyond this, requests fail fast with 503.")
    error_ratio: Ratio | None = Field(None, description="Open when this share of requests fail; off when unset.")
    min_requests: int = Field(20, ge=1)
    window: Duration = Field(10.0, gt=0)
    open_for: Duration = Field(30.0, gt=0)


class Upstream(Model):
    targets: list[Target | WeightedTarget] = Field(min_length=1)
    balance: Literal["round_robin", "random", "least_request", "hash"] = "round_robin"
    hash_on: str | None = Field(None, description="For balance: hash — ip, header:NAME, cookie:NAME or jwt.CLAIM.")
    health_check: HealthCheck | None = None
    outlier: Outlier | None = Field(None, description="Passive ejection of failing targets; off when unset.")
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    pool: Pool = Pool()
    tls: UpstreamTls | None = None
    protocol: Literal["http", "http2", "grpc"] = Field(
        "http",
        description="http: HTTP/1.1. http2: HTTP/2 (h2c prior knowledge for http:// targets, ALPN h2 for "
                    "https://). grpc: HTTP/2 with trailers, the deadline sent as grpc-timeout, health checks by "
                    "grpc.health.v1.Health/Check.",
    )
    preserve_host: bool = Field(True, description="Forward the client's Host (false: the target's host).")

    @model_validator(mode="after")
    def _hash_needs_key(self) -> Upstream:
        if self.balance == "hash":
            _check_key_spec(self.hash_on or "", "hash_on")
        elif self.hash_on is not None:
            raise ValueError("hash_on is only used with balance: hash")
        return self

    @property
    def weighted_targets(self) -> list[WeightedTarget]:
        return [t if isinstance(t, WeightedTarget) else WeightedTarget(url=t) for t in self.targets]


def _check_key_spec(value: str, field: str) -> str:
    """`ip`, `header:NAME`, `cookie:NAME` or `jwt.CLAIM`: where a request's cohort or hash key comes from."""
    if value == "ip":
        return value
    kind, _, name = value.partition(":")
    if kind in ("header", "cookie") and name:
        return value
    if value.startswith("jwt.") and len(value) > 4:
        return value
    raise ValueError(f"invalid {field} {value!r}: expected ip, header:NAME, cookie:NAME or jwt.CLAIM")


# --- routes -------------------------------------------------------------------------------------------

_METHOD = re.compile(r"^[A-Z]+$")


def _check_methods(value: list[str]) -> list[str]:
    upper = [m.upper() for m in value]
    for method in upper:
        if not _METHOD.match(method):
            raise ValueError(f"invalid method {method!r}")
    return upper


Methods = Annotated[list[str], AfterValidator(_check_methods)]
"""HTTP methods, written in any case, kept uppercase."""
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"path {value!r} must start with /")
    return value


PathPattern = Annotated[str, BeforeValidator(lambda v: _check_path(v) if isinstance(v, str) else v)]


class Match(Model):
    paths: Annotated[list[PathPattern], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="Path prefixes, matched on segment boundaries."
    )
    exact: Annotated[list[PathPattern], BeforeValidator(_as_list)] = Field(default_factory=list)
    regex: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="Python regular expressions matched against the whole path."
    )
    methods: Methods = Field(default_factory=list, description="Any method when empty.")
    hosts: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="Exact hosts or `*.example.com` wildcards; any host when empty."
    )
    headers: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Header name to the value (or one of the values) it must have."
    )

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            host = host.lower()
            bare = host[2:] if host.startswith("*.") else host
            if not bare or "*" in bare or "/" in bare:
                raise ValueError(f"invalid host {host!r}: expected api.example.com or *.example.com")
            out.append(host)
        return out

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
        return {k.lower(): v for k, v in value.items()}

    @model_validator(mode="after")
    def _some_path(self) -> Match:
        if not (self.paths or self.exact or self.regex):
            raise ValueError("a match needs at least one of paths, exact or regex")
        return self


class WeightedUpstream(Model):
    upstream: str
    weight: int = Field(ge=0, le=1_000_000)


RetryCondition = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int) else v),
]
_RETRY_WORDS = frozenset({"connect-failure", "reset", "timeout", "5xx", "gateway-error"})


class Backoff(Model):
    base: Duration = Field(0.025, gt=0, description="First retry waits up to this (full jitter).")
    max: Duration = Field(0.25, gt=0, description="No retry waits longer than this.")


class Retry(Model):
    attempts: int = Field(2, ge=1, le=10, description="Total tries, the first included.")
    retry_on: list[RetryCondition] = Field(
        default_factory=lambda: ["connect-failure"],
        description="connect-failure, reset, timeout, 5xx, gateway-error (502/503/504) or status codes.",
    )
    per_try_timeout: Duration | None = Field(None, gt=0, description="Each try's limit; the route timeout bounds all.")
    budget: Ratio = Field(0.2, description="Retries at most this share of the requests in flight upstream.")
    min_retry_concurrency: int = Field(3, ge=0, description="Retries always allowed in flight, whatever the budget.")
    backoff: Backoff = Backoff()

    @field_validator("retry_on")
    @classmethod
    def _conditions(cls, value: list[str]) -> list[str]:
        for condition in value:
            if condition not in _RETRY_WORDS and not (condition.isdigit() and 100 <= int(condition) <= 599):
                raise ValueError(
                    f"invalid retry_on {condition!r}: expected connect-failure, reset, timeout, 5xx, "
                    "gateway-error or a status code"
                )
        return value


class WebSocket(Model):
    """How a route relays WebSocket connections (docs/websocket.md)."""

    enabled: bool = Field(
        True, description="Relay `Upgrade: websocket` handshakes; false serves them as plain HTTP (Upgrade dropped)."
    )
    # Longer than nginx's 60 s proxy_read_timeout (a classic cause of dropped sockets) and Envoy's 5 min
    # stream idle timeout; the pings of common client and server libraries (every 20-30 s) stay well inside.
    idle_timeout: Duration = Field(600.0, gt=0, description="No bytes either way for this long closes both sides.")
    max_message_bytes: Size | None = Field(
        None, gt=0,
        description="Largest message (all its frames) either side may send; beyond, the client gets Close 1009 "
        "and the upstream is closed. Unset: no limit and frames are not looked at (like nginx and Envoy).",
    )


# A leg's path may name request values in braces; they are filled in URL-encoded (frontgate/server/aggregate.py).
LEG_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LEG_VALUE = re.compile(r"^(?:jwt\.[A-Za-z0-9_:-]+(?:\.[A-Za-z0-9_:-]+)*|consumer|header\.[A-Za-z0-9-]+"
                        r"|query\.[A-Za-z0-9_.~-]+)$")


class AggregateLeg(Model):
    """One upstream call of an aggregate route; its JSON answer becomes one key of the response."""

    upstream: str
    path: str = Field(description="Path and query for the upstream; {jwt.CLAIM}, {consumer}, {header.NAME} "
                      "and {query.NAME} are filled in from the request, URL-encoded.")
    required: bool = Field(False, description="A failed required leg fails the whole response (503); an "
                           "optional one gives null and a `Gateway-Partial` header.")
    timeout: Duration | None = Field(None, gt=0, description="This leg's own deadline (default: the route's).")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a leg's path starts with '/'")
        for name in LEG_PLACEHOLDER.findall(value):
            if not _LEG_VALUE.match(name):
                raise ValueError(f"unknown value {{{name}}}: use jwt.CLAIM, consumer, header.NAME or query.NAME")
        if any(c in value for c in " \r\n\t#") or value.count("{") != value.count("}"):
            raise ValueError("a leg's path holds spaces, control characters, '#' or unbalanced braces")
        return value


class Route(Model):
    name: str = Field(min_length=1)
    match: Match
    to: str | list[WeightedUpstream] | None = Field(
        None, description="An upstream name, or a weighted list (canary); or `aggregate` instead.")
    aggregate: dict[str, AggregateLeg] | None = Field(
        None, description="Answer with one JSON object whose keys are the JSON answers of upstream calls made "
        "in parallel (a backend for frontend), instead of proxying to `to`.")
    sticky_on: str | None = Field(
        None,
        description="Cohort key for weighted lists: ip, header:NAME, cookie:NAME or jwt.CLAIM.",
    )
    timeout: Duration | None = Field(None, gt=0, description="Whole request, retries included; 504 beyond.")
    retry: Retry = Field(default_factory=Retry, description="Default: one more try on connect failures only.")
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    auth_any: list[str] = Field(
        default_factory=list,
        description="Auth plugins of this route tried in this order; the first that succeeds wins "
        "(default: every auth plugin must pass).",
    )
    websocket: WebSocket = Field(default_factory=WebSocket, description="WebSocket relaying (on by default).")

    @field_validator("to")
    @classmethod
    def _to(cls, value: str | list[WeightedUpstream]) -> str | list[WeightedUpstream]:
        if isinstance(value, list):
            if not value:
                raise ValueError("a weighted list needs at least one upstream")
            if sum(w.weight for w in value) <= 0:
                raise ValueError("the weights add up to zero")
        return value

    @field_validator("sticky_on")
    @classmethod
    def _sticky(cls, value: str | None) -> str | None:
        return None if value is None else _check_key_spec(value, "sticky_on")

    @field_validator("aggregate")
    @classmethod
    def _legs(cls, value: dict[str, AggregateLeg] | None) -> dict[str, AggregateLeg] | None:
        if value is not None and not value:
            raise ValueError("an aggregate needs at least one leg")
        return value

    @model_validator(mode="after")
    def _one_destination(self) -> Route:
        if (self.to is None) == (self.aggregate is None):
            raise ValueError("a route needs exactly one of `to` (proxy) and `aggregate` (combine upstream calls)")
        return self

    @property
    def split(self) -> list[WeightedUpstream]:
        """Where `to` sends requests; empty for an aggregate route."""
        if self.to is None:
            return []
        if isinstance(self.to, str):
            return [WeightedUpstream(upstream=self.to, weight=1)]
        return self.to


# --- the whole file -----------------------------------------------------------------------------------


class AccessLog(Model):
    format: Literal["json"] = "json"
    to: str = Field("stdout", description="stdout, stderr or a file path.")


class Metrics(Model):
    prometheus: bool = Field(True, description="Serve /metrics (and /dashboard) on the admin listener.")


class Tracing(Model):
    otlp_endpoint: str = Field(
        description="OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (/v1/traces is added unless present)."
    )
    sample_ratio: float = Field(
        0.1, ge=0, le=1, description="Share of new traces recorded; a caller's sampled flag is honoured."
    )
    service_name: str = Field("frontgate", min_length=1, description="The service.name resource attribute.")

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid otlp_endpoint {value!r}: expected http(s)://HOST:PORT")
        return value


class Observability(Model):
    access_log: AccessLog | Literal[False] = Field(default_factory=AccessLog)
    metrics: Metrics = Field(default_factory=Metrics)
    tracing: Tracing | None = Field(None, description="Off when absent: no trace work on any request.")


_API_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def _check_key_hash(value: Any) -> Any:
    if isinstance(value, str) and not _API_KEY_HASH.match(value.lower()):
        raise ValueError("an API key is stored as its hash, 'sha256:<64 hex digits>' (`frontgate hash-key` "
                         "prints it); never the key itself")
    return value.lower() if isinstance(value, str) else value


class Consumer(Model):
    name: str = Field(min_length=1, description="Forwarded upstream as X-Consumer; used by allow and limits.")
    groups: list[str] = Field(default_factory=list)
    api_keys: list[Annotated[str, BeforeValidator(_check_key_hash)]] = Field(
        default_factory=list, description="sha256: hashes of this consumer's API keys."
    )
    mtls_subjects: list[Annotated[str, AfterValidator(normalize_subject)]] = Field(
        default_factory=list,
        description="Client certificate subjects (RFC 4514, most specific first, e.g. CN=billing.internal,O=Acme), "
        "matched exactly after normalizing the spelling (docs/tls.md).",
    )


_STORE_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")


class Store(Model):
    """Shared state across replicas (rate limits now). See docs/rate-limiting.md."""

    redis: str | None = Field(
        None,
        description="redis://[[user]:pass@]host:port/db, rediss:// (TLS), unix:///path, "
        "redis+sentinel://host:port[,host:port]/MASTER[/db] or redis+cluster://host:port[,host:port]; "
        "absent or empty (`${REDIS_URL:-}` with the variable unset): in-process memory, right for a single "
        "instance.",
    )
    timeout: Duration = Field(0.02, gt=0, le=10, description="Bound on one whole store decision, retries included.")
    on_failure: Literal["open", "closed"] = Field(
        "open", description="Store down or slow: open serves without the limit, closed answers 503."
    )

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None  # empty: as if absent, so one file serves with and without a Redis
        scheme, sep, rest = (value or "").partition("://")
        if value is not None and (not sep or not rest or scheme.lower() not in _STORE_SCHEMES):
            schemes = ", ".join(s + "://" for s in _STORE_SCHEMES)
            raise ValueError(f"invalid store URL {value!r}: expected one of {schemes}")
        return value


class GatewayConfig(Model):
    version: Literal[1]
    server: Server = Server()
    admin: Admin | None = Admin()
    observability: Observability = Observability()
    upstreams: dict[str, Upstream] = Field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Applied to every route.")
    routes: list[Route] = Field(default_factory=list)
    store: Store | None = Field(None, description="Shared state (rate limits); absent: in-process memory.")
    consumers: list[Consumer] = Field(default_factory=list, description="Who is calling (see the auth plugins).")
