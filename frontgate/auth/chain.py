"""How auth plugins sit in a route's chain.

- Every auth plugin is an `AuthPlugin`: `authenticate(ctx)` finds and checks a credential without changing
  the request; `apply` then records who is calling (`ctx.consumer`, `ctx.claims`, `X-Consumer`, forwarded
  claim headers) and strips the credential if configured to.
- Without `auth_any`, each configured auth plugin is its own hook and each must pass.
- With `auth_any: [a, b]`, one composite hook at the place of the first listed plugin tries them in the order
  given; the first that succeeds wins, and the request is refused only when all fail.
- Headers the gateway sets after auth (`X-Consumer` and every `forward_claims` header of any route) are
  removed from the client's request by the very first hook of every route, whether or not that route
  authenticates, so no upstream ever sees a client-made `X-User-Id`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from frontgate.auth.consumers import ConsumerTable, consumer_table
from frontgate.auth.credentials import Location, remove_location
from frontgate.auth.errors import AuthFailure, AuthUnavailable, Forbidden, Unauthorized, invalid
from frontgate.auth.metrics import record_failure
from frontgate.config.schema import GatewayConfig, Route
from frontgate.errors import HttpError
from frontgate.pipeline.context import Reply, RequestContext
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig

RequestHook = Callable[[RequestContext], Awaitable[Reply | None]]

AUTH_PLUGIN_NAMES = ("jwt", "api_key", "oauth2_introspection")
CONSUMER_HEADER = b"x-consumer"
WWW_AUTHENTICATE = b"www-authenticate"


@dataclass(slots=True)
class Identity:
    consumer: str | None = None
    claims: dict[str, Any] | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # set upstream


class AuthPlugin(Plugin):
    """Base of the authenticators (jwt, api_key, oauth2_introspection)."""

    scheme: ClassVar[bytes] = b"Bearer"

    def __init__(self, config: PluginConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self.consumers: ConsumerTable = consumer_table(build.shared, build.gateway.consumers)

    async def authenticate(self, ctx: RequestContext) -> Identity:
        """Find and check the credential; raise `AuthFailure`. Must not change the request."""
        raise NotImplementedError

    def credential_locations(self) -> tuple[Location, ...]:
        return ()

    def strips_credential(self) -> bool:
        return False

    def challenge(self, failure: AuthFailure) -> bytes:
        """The `WWW-Authenticate` value for a 401 (RFC 6750 §3 for Bearer)."""
        if failure.kind == "missing":
            return self.scheme
        return self.scheme + b' error="invalid_token"'

    def apply(self, ctx: RequestContext, identity: Identity) -> None:
        if self.strips_credential():
            for location in self.credential_locations():
                remove_location(ctx, location)
        if identity.consumer is not None:
            if ctx.consumer is not None and ctx.consumer != identity.consumer:
                raise invalid("consumer_mismatch")  # two required credentials naming different callers
            ctx.consumer = identity.consumer
            ctx.set_header(CONSUMER_HEADER, identity.consumer.encode("utf-8"))
        if identity.claims is not None and ctx.claims is None:
            ctx.claims = identity.claims
        for name, value in identity.headers:
            ctx.set_header(name, value)

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        try:
            self.apply(ctx, await self.authenticate(ctx))
        except AuthFailure as failure:
            raise rejection(ctx, [(self, failure)]) from None
        return None


def rejection(ctx: RequestContext, failures: Sequence[tuple[AuthPlugin, AuthFailure]]) -> HttpError:
    """Count every failure and pick the answer: 403 if some credential was good but not enough, 503 if one
    could not be checked, else 401 with one challenge per authenticator tried."""
    for plugin, failure in failures:
        record_failure(ctx, plugin.name, failure.reason)
    kinds = {failure.kind for _, failure in failures}
    if "forbidden" in kinds:
        return Forbidden()
    if "unavailable" in kinds:
        return AuthUnavailable()
    challenges: list[tuple[bytes, bytes]] = []
    for plugin, failure in failures:
        header = (WWW_AUTHENTICATE, plugin.challenge(failure))
        if header not in challenges:
            challenges.append(header)
    return Unauthorized(headers=challenges)


def any_of(members: Sequence[AuthPlugin]) -> RequestHook:
    """One hook trying `members` in order; the first that authenticates wins."""
    members = tuple(members)

    async def authenticate_any(ctx: RequestContext) -> Reply | None:
        failures: list[tuple[AuthPlugin, AuthFailure]] = []
        for member in members:
            try:
                identity = await member.authenticate(ctx)
            except AuthFailure as failure:
                failures.append((member, failure))
                continue
            # The others' credentials are stripped as they are configured to be, unless the winner reads the
            # same place (a bearer token tried by both jwt and introspection belongs to the winner).
            kept = set(member.credential_locations())
            for other in members:
                if other is not member and other.strips_credential():
                    for location in other.credential_locations():
                        if location not in kept:
                            remove_location(ctx, location)
            try:
                member.apply(ctx, identity)
            except AuthFailure as failure:
                raise rejection(ctx, [(member, failure)]) from None
            return None
        raise rejection(ctx, failures)

    authenticate_any.__qualname__ = "auth_any(" + ",".join(m.name for m in members) + ")"
    return authenticate_any


def gateway_set_headers(config: GatewayConfig, shared: dict[str, Any]) -> frozenset[bytes]:
    """Every header some auth plugin of this config sets upstream; computed once per generation."""
    cached = shared.get("auth.gateway_headers")
    if isinstance(cached, frozenset):
        return cached
    names: set[bytes] = set()
    any_auth = bool(config.consumers)
    for section in [config.plugins, *(route.plugins for route in config.routes)]:
        for name, settings in section.items():
            if name not in AUTH_PLUGIN_NAMES or not isinstance(settings, dict):
                continue
            any_auth = True
            forward = settings.get("forward_claims")
            if isinstance(forward, dict):
                names.update(str(header).lower().encode("latin-1") for header in forward.values())
    if any_auth:
        names.add(CONSUMER_HEADER)
    result = frozenset(names)
    shared["auth.gateway_headers"] = result
    return result


def strip_hook(names: frozenset[bytes]) -> RequestHook:
    async def strip_gateway_headers(ctx: RequestContext) -> Reply | None:
        headers = ctx.headers
        for key, _ in headers:
            if key in names:
                headers[:] = [(k, v) for k, v in headers if k not in names]
                break
        return None

    return strip_gateway_headers


def compose_request_hooks(
    plugins: Sequence[Plugin], route: Route | None, build: BuildContext
) -> tuple[RequestHook, ...]:
    """The route's request hooks in priority order, with header stripping first and `auth_any` folded in."""
    hooks: list[RequestHook] = []
    protected = gateway_set_headers(build.gateway, build.shared)
    if protected and route is not None:
        hooks.append(strip_hook(protected))
    group_names = list(route.auth_any) if route is not None else []
    members = [p for n in group_names for p in plugins if p.name == n and isinstance(p, AuthPlugin)]
    grouped = len(members) > 1
    placed = False
    for plugin in plugins:
        if not plugin.implements("on_request"):
            continue
        if grouped and plugin in members:
            if not placed:
                hooks.append(any_of(members))
                placed = True
            continue
        hooks.append(plugin.on_request)
    return tuple(hooks)
