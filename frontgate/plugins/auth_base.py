"""The base of the authenticator plugins (jwt, api_key, oauth2_introspection); see frontgate/auth/chain.py for
how they combine on a route."""

from __future__ import annotations

from typing import Any, ClassVar

from frontgate.auth.chain import CONSUMER_HEADER, Identity, rejection
from frontgate.auth.consumers import ConsumerTable, consumer_table
from frontgate.auth.credentials import Location, claim, header_value, remove_location, rewrite_headers
from frontgate.auth.errors import AuthFailure, invalid
from frontgate.config.schema import Route
from frontgate.pipeline.context import Reply, RequestContext
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig


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
        """Record who is calling and rewrite the forwarded headers in one pass: drop the credential (if so
        configured) and any copy of the headers set here, then append the identity headers."""
        consumer = identity.consumer
        if consumer is not None and ctx.consumer is not None and ctx.consumer != consumer:
            raise invalid("consumer_mismatch")  # two required credentials naming different callers
        strip = self.strips_credential()
        if strip:
            for location in self.credential_locations():
                if location[0] != "header":
                    remove_location(ctx, location)
        drop, outgoing = identity.header_changes(
            self._credential_headers() if strip else frozenset(), CONSUMER_HEADER)
        if drop:
            rewrite_headers(ctx, drop, outgoing)
        if consumer is not None:
            ctx.consumer = consumer
        if identity.claims is not None and ctx.claims is None:
            ctx.claims = identity.claims

    def _credential_headers(self) -> frozenset[bytes]:
        names = self.__dict__.get("_credential_header_names")
        if names is None:
            names = frozenset(n for kind, n in self.credential_locations() if kind == "header" and isinstance(n, bytes))
            self.__dict__["_credential_header_names"] = names
        return names

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        try:
            self.apply(ctx, await self.authenticate(ctx))
        except AuthFailure as failure:
            raise rejection(ctx, [(self, failure)]) from None
        return None


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
