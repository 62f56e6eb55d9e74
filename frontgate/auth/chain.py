"""How auth plugins sit in a route's chain.

- Every auth plugin is an `AuthPlugin` (frontgate/plugins/auth_base.py): `authenticate(ctx)` finds and
  checks a credential without changing the request; `apply` then records who is calling (`ctx.consumer`,
  `ctx.claims`, `X-Consumer`, forwarded claim headers) and strips the credential if configured to.
- Without `auth_any`, each configured auth plugin is its own hook and each must pass.
- With `auth_any: [a, b]`, one composite hook at the place of the first listed plugin tries them in the order
  given; the first that succeeds wins, and the request is refused only when all fail.
- Headers the gateway sets after auth (`X-Consumer` and every `forward_claims` header of any route) are
  removed from the client's request by the very first hook of every route, whether or not that route
  authenticates, so no upstream ever sees a client-made `X-User-Id`: a hook of their own, or the route's
  authenticator when it comes first (then in the same pass as its own header changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from frontgate.auth.checks import AUTH_PLUGIN_NAMES
from frontgate.auth.credentials import Location, remove_location
from frontgate.auth.errors import AuthFailure, AuthUnavailable, Forbidden, Unauthorized
from frontgate.auth.metrics import record_failure
from frontgate.config.schema import GatewayConfig, Route
from frontgate.errors import HttpError
from frontgate.pipeline.context import HookResult, Reply, RequestContext, RequestHook

if TYPE_CHECKING:  # frontgate.plugins imports this module through the auth plugins
    from frontgate.plugins.base import BuildContext, Plugin

CONSUMER_HEADER = b"x-consumer"
WWW_AUTHENTICATE = b"www-authenticate"


@dataclass(frozen=True, slots=True)
class HeaderChanges:
    """What a hook that also drops some headers of its own (its credential, the client's copies of gateway
    headers) changes in the forwarded headers for one identity."""

    drop: tuple[bytes, ...]  # `b"name: "` prefixes of the lines to drop: those headers and the ones set here
    extra: tuple[bytes, ...]  # the ones set here only: what a pass that left out the others must still drop
    add: tuple[bytes, ...]  # the lines to append


@dataclass(slots=True)
class Identity:
    consumer: str | None = None
    claims: dict[str, Any] | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # set upstream
    _changes: dict[frozenset[bytes], HeaderChanges] = field(default_factory=dict)

    def header_changes(self, dropped: frozenset[bytes], consumer_header: bytes) -> HeaderChanges:
        """The header changes for this identity on a hook that also drops the `dropped` headers, worked out
        once per identity and `dropped`: a cached JWT's identity serves every request carrying that token."""
        changes = self._changes.get(dropped)
        if changes is None:
            outgoing = list(self.headers)
            if self.consumer is not None:
                outgoing.insert(0, (consumer_header, self.consumer.encode("utf-8")))
            names = {name for name, _ in outgoing}
            changes = self._changes[dropped] = HeaderChanges(
                tuple(name + b": " for name in sorted(dropped | names)),
                tuple(name + b": " for name in sorted(names - dropped)),
                tuple(name + b": " + value + b"\r\n" for name, value in outgoing),
            )
        return changes


class Authenticator(Protocol):
    """What `frontgate.plugins.auth_base.AuthPlugin` offers the combinators here."""

    name: ClassVar[str]

    def authenticate_now(self, ctx: RequestContext) -> Identity | None: ...

    async def authenticate(self, ctx: RequestContext) -> Identity: ...

    def credential_locations(self) -> tuple[Location, ...]: ...

    def strips_credential(self) -> bool: ...

    def challenge(self, failure: AuthFailure) -> bytes: ...

    def apply(self, ctx: RequestContext, identity: Identity) -> None: ...


@runtime_checkable
class StripsGatewayHeaders(Protocol):
    def take_gateway_headers(self, names: frozenset[bytes]) -> bool:
        """Called while the route is compiled when this plugin's hook is the route's first: True when the hook
        will then remove the client's copies of `names` itself, on every request, whatever its outcome."""


def rejection(ctx: RequestContext, failures: Sequence[tuple[Authenticator, AuthFailure]]) -> HttpError:
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


def any_of(members: Sequence[Authenticator]) -> RequestHook:
    """One hook trying `members` in order; the first that authenticates wins. Members that answer at once
    (a cached token, an API key) are tried in the caller's stack; from the first that must wait on, the rest
    are tried in a coroutine."""
    members = tuple(members)

    def win(ctx: RequestContext, member: Authenticator, identity: Identity) -> None:
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

    def authenticate_any(ctx: RequestContext) -> HookResult:
        failures: list[tuple[Authenticator, AuthFailure]] = []
        for index, member in enumerate(members):
            try:
                identity = member.authenticate_now(ctx)
            except AuthFailure as failure:
                failures.append((member, failure))
                continue
            if identity is None:
                return authenticate_rest(ctx, index, failures)
            win(ctx, member, identity)
            return None
        raise rejection(ctx, failures)

    async def authenticate_rest(
        ctx: RequestContext, start: int, failures: list[tuple[Authenticator, AuthFailure]]
    ) -> Reply | None:
        for member in members[start:]:
            try:
                identity = await member.authenticate(ctx)
            except AuthFailure as failure:
                failures.append((member, failure))
                continue
            win(ctx, member, identity)
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
    prefixes = tuple(name + b": " for name in names)

    def strip_gateway_headers(ctx: RequestContext) -> None:
        # Scan the ready-made `name: value\r\n` lines (lowercase names): most requests carry none of these
        # headers, and then the header pairs are never built.
        lines = ctx.header_lines()
        for line in lines:
            if line.startswith(prefixes):
                ctx.set_header_lines([line for line in lines if not line.startswith(prefixes)])
                break
        return None

    return strip_gateway_headers


def compose_request_hooks(
    plugins: Sequence[Plugin], route: Route | None, build: BuildContext
) -> tuple[RequestHook, ...]:
    """The route's request hooks in priority order, with header stripping first and `auth_any` folded in."""
    hooks: list[RequestHook] = []
    protected = gateway_set_headers(build.gateway, build.shared) if route is not None else frozenset()
    group_names = list(route.auth_any) if route is not None else []
    members: list[Authenticator] = [
        p for n in group_names for p in plugins if p.name == n and hasattr(p, "authenticate")  # type: ignore[misc]
    ]
    grouped = len(members) > 1
    member_ids = {id(m) for m in members}
    placed = False
    for plugin in plugins:
        if not plugin.uses("on_request"):
            continue
        if grouped and id(plugin) in member_ids:
            if not placed:
                hooks.append(any_of(members))
                placed = True
            continue
        # An authenticator first on the route may strip the client's copies itself, in the pass over the
        # header lines where it drops its credential and adds its own headers (a pass less per request).
        if (protected and not hooks and isinstance(plugin, StripsGatewayHeaders)
                and plugin.take_gateway_headers(protected)):
            protected = frozenset()
        hooks.append(plugin.request_hook())
    if protected:
        hooks.insert(0, strip_hook(protected))
    return tuple(hooks)
