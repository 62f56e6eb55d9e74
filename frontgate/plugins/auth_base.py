"""The base of the authenticator plugins (jwt, api_key, oauth2_introspection); see frontgate/auth/chain.py for
how they combine on a route."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from frontgate.auth.chain import CONSUMER_HEADER, Identity, rejection, strip_hook
from frontgate.auth.consumers import ConsumerTable, consumer_table
from frontgate.auth.credentials import Location, claim, header_value, remove_location, rewrite_headers
from frontgate.auth.errors import AuthFailure, invalid
from frontgate.config.schema import Route
from frontgate.pipeline.context import HookResult, RequestContext, RequestHook
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig


class AuthPlugin(Plugin):
    """Base of the authenticators (jwt, api_key, oauth2_introspection)."""

    scheme: ClassVar[bytes] = b"Bearer"
    # Set by take_gateway_headers when this plugin's hook, first on its route, strips gateway headers too.
    gateway_headers: frozenset[bytes] = frozenset()
    _strip_gateway_headers: RequestHook | None = None

    def __init__(self, config: PluginConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self.consumers: ConsumerTable = consumer_table(build.shared, build.gateway.consumers)

    def authenticate_now(self, ctx: RequestContext) -> Identity | None:
        """The identity when it is known without waiting (a cached token, a key lookup), None when `authenticate`
        must be awaited. Raises `AuthFailure` and must not change the request, like `authenticate`."""
        return None

    async def authenticate(self, ctx: RequestContext) -> Identity:
        """Find and check the credential, waiting if need be; raise `AuthFailure`. Must not change the request.
        By default the answer of `authenticate_now`, for authenticators that never wait."""
        identity = self.authenticate_now(ctx)
        if identity is None:
            raise NotImplementedError(f"{type(self).__name__} must implement authenticate")
        return identity

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
        """Record who is calling and rewrite the forwarded headers in one pass: drop the credential (if so
        configured), the client's copies of gateway headers (if this hook comes first) and any copy of the
        headers set here, then append the identity headers."""
        consumer = identity.consumer
        if consumer is not None and ctx.consumer is not None and ctx.consumer != consumer:
            raise invalid("consumer_mismatch")  # two required credentials naming different callers
        dropped, elsewhere = self._stripped
        for location in elsewhere:
            remove_location(ctx, location)
        changes = identity.header_changes(dropped, CONSUMER_HEADER)
        if changes.drop:
            rewrite_headers(ctx, changes.drop, changes.add)
        if consumer is not None:
            ctx.consumer = consumer
        if identity.claims is not None and ctx.claims is None:
            ctx.claims = identity.claims

    def take_gateway_headers(self, names: frozenset[bytes]) -> bool:
        """See chain.StripsGatewayHeaders. Called while the route is compiled, before `_stripped` is worked out."""
        read = {name for kind, name in self.credential_locations() if kind == "header"}
        if any(kind == "cookie" for kind, _ in self.credential_locations()):
            read.add(b"cookie")
        if not read.isdisjoint(names):
            return False  # it reads one of them, which must be gone before it does
        self.gateway_headers = names
        self._strip_gateway_headers = strip_hook(names)
        return True

    @cached_property
    def _stripped(self) -> tuple[frozenset[bytes], tuple[Location, ...]]:
        """What `apply` strips: (header names, query/cookie locations). Worked out on first use: subclasses set
        their locations up after this class's __init__."""
        if not self.strips_credential():
            return self.gateway_headers, ()
        locations = self.credential_locations()
        headers = frozenset(n for kind, n in locations if kind == "header" and isinstance(n, bytes))
        return headers | self.gateway_headers, tuple(location for location in locations if location[0] != "header")

    def on_request(self, ctx: RequestContext) -> HookResult:
        # Settled here in the caller's stack when the identity is known at once (a cached token): a coroutine
        # is made only for a request that must wait (a signature to check, a JWKS fetch, introspection).
        try:
            identity = self.authenticate_now(ctx)
            if identity is not None:
                self.apply(ctx, identity)
                return None
        except AuthFailure as failure:
            if self._strip_gateway_headers is not None:
                self._strip_gateway_headers(ctx)  # whatever the outcome: later hooks never see the client's copies
            raise rejection(ctx, [(self, failure)]) from None
        if self._strip_gateway_headers is not None:
            self._strip_gateway_headers(ctx)
        return self._authenticate_and_apply(ctx)

    async def _authenticate_and_apply(self, ctx: RequestContext) -> None:
        try:
            self.apply(ctx, await self.authenticate(ctx))
        except AuthFailure as failure:
            raise rejection(ctx, [(self, failure)]) from None


def identity_from_claims(
    claims: dict[str, Any], consumer_claim: str | None, consumers: ConsumerTable,
    forward: list[tuple[str, bytes]],
) -> Identity:
    """The identity verified claims (a token's or an introspection answer's) stand for: the consumer named by
    `consumer_claim`, which must be declared, and the `forward_claims` headers."""
    consumer = None
    if consumer_claim:
        value = claim(claims, consumer_claim)
        if not isinstance(value, str) or consumers.get(value) is None:
            raise invalid("unknown_consumer")
        consumer = value
    headers = []
    for name, header in forward:
        value = claim(claims, name)
        if value is not None:
            headers.append((header, header_value(value)))
    return Identity(consumer, claims, headers)
