"""Validated config -> an immutable `Runtime`: router, per-route plugin chains, upstream clusters.

Everything a request needs is decided here once per config generation, so the hot path only looks up.
A reload compiles a whole new Runtime aside and swaps it in; requests in flight keep the one they began on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from frontgate.auth.chain import compose_request_hooks
from frontgate.config.loader import LoadedConfig
from frontgate.config.schema import GatewayConfig, Route, WebSocket
from frontgate.errors import HttpError, MethodNotAllowed
from frontgate.pipeline.context import Reply, RequestContext, RequestHook, RequestSummary, ResponseHead
from frontgate.plugins import REGISTRY
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig
from frontgate.plugins.body_limit import BodyLimitConfig
from frontgate.plugins.cors import CorsPlugin, is_preflight, requested_method
from frontgate.routing.router import Router
from frontgate.routing.split import UpstreamSplit, sticky_key_from
from frontgate.server.aggregate import Leg, compile_legs
from frontgate.server.tls import CertificateSelector, certificate_selector
from frontgate.upstream.cluster import UpstreamCluster, UpstreamRegistry
from frontgate.upstream.pool import PoolKey
from frontgate.upstream.retry import RetryPolicy
from frontgate.upstream.tls import upstream_tls_context

ResponseHook = Callable[[RequestContext, ResponseHead], None]
LogHook = Callable[[RequestContext, RequestSummary], None]
BodyHook = Callable[[RequestContext, bytes], Reply | bytes | None]
ResponseBodyHook = Callable[[RequestContext, ResponseHead, bytes], bytes]
StickyKey = Callable[[Sequence[tuple[bytes, bytes]], str, Any], bytes | None]

DEFAULT_ROUTE_TIMEOUT = 60.0  # like nginx's proxy_read_timeout; routes set their own


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    config: Route
    split: UpstreamSplit
    sticky_key: StickyKey | None
    clusters: dict[str, UpstreamCluster]
    plugins: tuple[Plugin, ...]
    request_hooks: tuple[RequestHook, ...]
    response_hooks: tuple[ResponseHook, ...]  # already in reverse priority order
    log_hooks: tuple[LogHook, ...]
    timeout: float
    max_body_bytes: int
    retry: RetryPolicy
    only_cluster: UpstreamCluster | None  # set when the route has a single upstream: no split to pick
    aggregate: tuple[Leg, ...] | None  # an aggregate route's upstream calls (then `split` picks nothing)
    body_hooks: tuple[BodyHook, ...]  # plugins that read the whole request body (then it is buffered)
    response_body_hooks: tuple[ResponseBodyHook, ...]  # plugins that change whole response bodies
    response_body_limit: int  # bytes of a response held for them
    response_hold_always: bool  # hold every response (502 beyond the limit), not only those asked for
    deadline_line: bytes  # the x-request-deadline header of a first try, which has the whole timeout
    websocket: WebSocket | None  # None when the route serves WebSocket handshakes as plain HTTP


ROUTE_CACHE_SIZE = 4096


@dataclass(slots=True)
class Runtime:
    generation: int
    config: GatewayConfig
    sources: list[str]
    router: Router[CompiledRoute]
    routes: list[CompiledRoute]
    clusters: dict[str, UpstreamCluster]
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    declared_hosts: frozenset[str]
    wildcard_hosts: tuple[str, ...]
    # Replies to requests no route matched (404/405) still get the global plugins' response hooks, so the
    # request id is echoed and CORS headers are set on errors too.
    unrouted_response_hooks: tuple[ResponseHook, ...]
    unrouted_plugins: tuple[Plugin, ...]
    routes_on_headers: bool  # some route matches on headers: only then does routing need them
    build: BuildContext
    # Each TLS listener's certificates of this generation, by address: new handshakes pick from here, so a
    # reload serves re-read certificate files (frontgate/server/tls.py).
    listener_certificates: dict[str, CertificateSelector] = field(default_factory=dict)
    # Recent (method, host, raw path) -> (normal path, route). Most traffic repeats a few request targets, and
    # a hit skips normalising and matching. Per generation (a reload starts empty), bounded (see
    # ROUTE_CACHE_SIZE), and unused when some route matches on headers.
    route_cache: dict[tuple[str, str, bytes], tuple[str, CompiledRoute]] = field(default_factory=dict)
    is_trusted: Callable[[str], bool] = field(init=False)

    def __post_init__(self) -> None:
        networks = self.trusted_networks

        @lru_cache(maxsize=4096)
        def is_trusted(ip: str) -> bool:
            if not networks:
                return False
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(address in net for net in networks)

        self.is_trusted = is_trusted

    def host_declared(self, host: str) -> bool:
        return host in self.declared_hosts or any(host.endswith(w) for w in self.wildcard_hosts)

    def match_route(self, ctx: RequestContext) -> CompiledRoute:
        """The route of a request: the router's match. A CORS preflight the router refuses (405: the route
        takes no OPTIONS) gets the route of the method it asks about, when that route has CORS on (its `cors`
        plugin answers the preflight; frontgate/plugins/cors.py). Raises NotFound or MethodNotAllowed."""
        try:
            return self.router.match(ctx.method, ctx.host, ctx.path, ctx.headers if self.routes_on_headers else ())
        except MethodNotAllowed:
            headers = ctx.headers
            asked = requested_method(headers) if is_preflight(ctx.method, headers) else None
            if asked is None:
                raise
            try:
                route = self.router.match(asked, ctx.host, ctx.path, headers if self.routes_on_headers else ())
            except HttpError:
                route = None
            if route is None or not any(plugin.name == CorsPlugin.name for plugin in route.plugins):
                raise
            return route

    def plugins(self) -> list[Plugin]:
        seen: dict[int, Plugin] = {id(p): p for p in self.unrouted_plugins}
        for route in self.routes:
            for plugin in route.plugins:
                seen[id(plugin)] = plugin
        return list(seen.values())

    def pool_keys(self) -> set[PoolKey]:
        keys: set[PoolKey] = set()
        for cluster in self.clusters.values():
            keys |= cluster.pool_keys()
        return keys


def compile_runtime(loaded: LoadedConfig, pools: UpstreamRegistry, generation: int) -> Runtime:
    config = loaded.config
    clusters = {
        name: UpstreamCluster(name, upstream, pools, upstream_tls_context(upstream))
        for name, upstream in config.upstreams.items()
    }
    global_plugins = loaded.global_plugins
    build = BuildContext(config)
    routes = [
        _compile_route(route, loaded.route_plugins[index], global_plugins, clusters, config, build)
        for index, route in enumerate(config.routes)
    ]
    hosts = {h for r in config.routes for h in r.match.hosts}
    unrouted = _instantiate(dict(global_plugins), None, build)
    return Runtime(
        generation=generation,
        config=config,
        sources=loaded.sources,
        router=Router([(r.name, r.config.match, r) for r in routes]),
        routes=routes,
        clusters=clusters,
        trusted_networks=tuple(ipaddress.ip_network(n, strict=False) for n in config.server.trusted_proxies),
        declared_hosts=frozenset(h for h in hosts if not h.startswith("*.")),
        wildcard_hosts=tuple(h[1:] for h in hosts if h.startswith("*.")),
        unrouted_response_hooks=tuple(p.on_response for p in reversed(unrouted) if p.uses("on_response")),
        unrouted_plugins=tuple(unrouted),
        routes_on_headers=any(r.match.headers for r in config.routes),
        build=build,
        listener_certificates={
            listener.address: certificate_selector(listener.tls)
            for listener in config.server.listen if listener.tls is not None
        },
    )


def _instantiate(effective: dict[str, BaseModel], route: Route | None, build: BuildContext) -> list[Plugin]:
    """Build the enabled plugins, highest priority first."""
    plugins = []
    for name, plugin_config in effective.items():
        assert isinstance(plugin_config, PluginConfig)
        if plugin_config.enabled:
            plugins.append(REGISTRY[name](plugin_config, route, build))
    plugins.sort(key=lambda p: -p.priority)
    return plugins


def _compile_route(
    route: Route,
    route_plugins: dict[str, BaseModel | None],
    global_plugins: dict[str, BaseModel],
    clusters: dict[str, UpstreamCluster],
    config: GatewayConfig,
    build: BuildContext,
) -> CompiledRoute:
    # Route settings override global ones by name; `None` (enabled: false) switches a global plugin off.
    effective: dict[str, BaseModel] = dict(global_plugins)
    for name, plugin_config in route_plugins.items():
        if plugin_config is None:
            effective.pop(name, None)
        else:
            effective[name] = plugin_config
    plugins = _instantiate(effective, route, build)

    max_body = config.server.limits.max_body_bytes
    body_limit = effective.get("body_limit")
    if isinstance(body_limit, BodyLimitConfig) and body_limit.enabled:
        max_body = min(max_body, body_limit.value)
    body_readers = [p for p in plugins if p.uses("on_body")]
    for reader in body_readers:
        max_body = min(max_body, reader.body_limit)  # a body read whole is bounded by every reader's limit

    split = route.split
    legs = route.aggregate or {}
    return CompiledRoute(
        name=route.name,
        config=route,
        split=UpstreamSplit([(w.upstream, w.weight) for w in split] or [("", 1)]),  # aggregate: never picked
        sticky_key=sticky_key_from(route.sticky_on) if len(split) > 1 else None,
        clusters={**{w.upstream: clusters[w.upstream] for w in split},
                  **{leg.upstream: clusters[leg.upstream] for leg in legs.values()}},
        plugins=tuple(plugins),
        request_hooks=compose_request_hooks(plugins, route, build),
        response_hooks=tuple(p.on_response for p in reversed(plugins) if p.uses("on_response")),
        log_hooks=tuple(p.on_log for p in reversed(plugins) if p.uses("on_log")),
        timeout=route.timeout or DEFAULT_ROUTE_TIMEOUT,
        max_body_bytes=max_body,
        retry=RetryPolicy.from_config(route.retry),
        only_cluster=clusters[split[0].upstream] if len(split) == 1 else None,
        aggregate=compile_legs(legs, clusters) if legs else None,
        body_hooks=tuple(p.on_body for p in body_readers),
        response_body_hooks=tuple(p.on_response_body for p in reversed(plugins) if p.uses("on_response_body")),
        response_body_limit=min((p.body_limit for p in plugins if p.uses("on_response_body")), default=0),
        response_hold_always=any(p.hold_whole_response for p in plugins if p.uses("on_response_body")),
        deadline_line=b"\r\nx-request-deadline: %d\r\n" % int((route.timeout or DEFAULT_ROUTE_TIMEOUT) * 1000),
        # WebSocket needs an HTTP/1.1 upstream (no RFC 8441 to HTTP/2 ones): a route to an HTTP/2 upstream
        # serves handshakes as plain HTTP, as with `websocket: {enabled: false}`.
        websocket=route.websocket if route.websocket.enabled and split and all(
            config.upstreams[w.upstream].protocol == "http" for w in split) else None,
    )
