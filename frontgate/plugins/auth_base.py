"""The base of the authenticator plugins (jwt, api_key, oauth2_introspection); see frontgate/auth/chain.py for
how they combine on a route."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from frontgate.auth.chain import CONSUMER_HEADER, Identity, rejection
from frontgate.auth.consumers import ConsumerTable, consumer_table
from frontgate.auth.credentials import Location, claim, header_value, remove_location, rewrite_headers
from frontgate.auth.errors import AuthFailure, invalid
from frontgate.config.schema import Route
from frontgate.pipeline.context import HookResult, RequestContext
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig


class AuthPlugin(Plugin):
    """Base of the authenticators (jwt, api_key, oauth2_introspection)."""

    scheme: ClassVar[bytes] = b"Bearer"

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
        configured) and any copy of the headers set here, then append the identity headers."""
        consumer = identity.consumer
        if consumer is not None and ctx.consumer is not None and ctx.consumer != consumer:
            raise invalid("consumer_mismatch")  # two required credentials naming different callers
        headers, elsewhere = self._stripped
        for location in elsewhere:
            remove_location(ctx, location)
        drop, outgoing = identity.header_changes(headers, CONSUMER_HEADER)
        if drop:
            rewrite_headers(ctx, drop, outgoing)
        if consumer is not None:
            ctx.consumer = consumer
        if identity.claims is not None and ctx.claims is None:
            ctx.claims = identity.claims

    @cached_property
    def _stripped(self) -> tuple[frozenset[bytes], tuple[Location, ...]]:
        """What `apply` strips: (credential header names, the query/cookie locations); worked out on first use,
        as subclasses set their locations up after this class's __init__."""
        if not self.strips_credential():
            return frozenset(), ()
        locations = self.credential_locations()
        headers = frozenset(n for kind, n in locations if kind == "header" and isinstance(n, bytes))
        return headers, tuple(location for location in locations if location[0] != "header")

    def on_request(self, ctx: RequestContext) -> HookResult:
        # Settled here in the caller's stack when the identity is known at once (a cached token): a coroutine
        # is made only for a request that must wait (a signature to check, a JWKS fetch, introspection).
        try:
            identity = self.authenticate_now(ctx)
            if identity is None:
                return self._authenticate_and_apply(ctx)
            self.apply(ctx, identity)
        except AuthFailure as failure:
            raise rejection(ctx, [(self, failure)]) from None
        return None

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
