"""oauth2_introspection: ask the authorization server whether a bearer token is active (RFC 7662).

    oauth2_introspection:
      url: "https://auth.example.com/introspect"
      client_id: gw
      client_secret: "${INTROSPECT_SECRET}"
      cache: 60s                      # answers (good and bad) kept this long, never past the token's exp
      consumer_claim: client_id       # the answer's member naming a consumer
      forward_claims: {sub: X-User-Id}

The answer's members (`scope`, `sub`, `client_id`, ...) become `ctx.claims`, so `allow: {scopes: [...]}`
works as it does with JWTs.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from frontgate.auth.chain import Identity
from frontgate.auth.credentials import (
    HeaderName,
    Location,
    bearer_values,
    single_credential,
)
from frontgate.auth.errors import invalid, missing
from frontgate.auth.introspection import Introspector
from frontgate.config.schema import Duration, Route, Size
from frontgate.pipeline.context import RequestContext
from frontgate.plugins.auth_base import AuthPlugin, identity_from_claims
from frontgate.plugins.base import BuildContext, PluginConfig


class IntrospectionConfig(PluginConfig):
    url: str = Field(description="The RFC 7662 introspection endpoint.")
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    auth_method: Literal["basic", "post"] = Field("basic", description="client_secret_basic or _post.")
    cache: Duration = Field(60.0, ge=0, description="How long answers are kept (never past the token's exp).")
    timeout: Duration = Field(2.0, gt=0)
    cache_size: int = Field(10_000, ge=0)
    token_type_hint: str | None = "access_token"
    clock_skew: Duration = Field(60.0, ge=0, le=600)
    consumer_claim: str | None = Field(None, description="Answer member whose value names a consumer.")
    forward_claims: dict[str, HeaderName] = Field(default_factory=dict, description="Answer member to upstream header.")
    forward_token: bool = Field(False, description="Keep the raw token in the forwarded request.")
    header: HeaderName = Field("Authorization", description="Header carrying `Bearer <token>`.")
    max_token_size: Size = Field(8 * 1024, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid url {value!r}: expected an http(s) URL")
        return value



def shared_introspector(config: IntrospectionConfig, shared: dict[str, Any]) -> Introspector:
    introspectors: dict[str, Introspector] = shared.setdefault("auth.introspectors", {})
    key = config.model_dump_json(include={"url", "client_id", "client_secret", "auth_method", "cache", "timeout",
                                          "cache_size", "token_type_hint", "clock_skew"})
    introspector = introspectors.get(key)
    if introspector is None:
        introspector = introspectors[key] = Introspector(
            config.url, config.client_id, config.client_secret, auth_method=config.auth_method,
            cache_ttl=config.cache, timeout=config.timeout, cache_size=config.cache_size,
            token_type_hint=config.token_type_hint, clock_skew=config.clock_skew,
        )
    return introspector


class IntrospectionPlugin(AuthPlugin):
    name = "oauth2_introspection"
    priority = 1050
    Config = IntrospectionConfig
    config: IntrospectionConfig

    def __init__(self, config: IntrospectionConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self.introspector = shared_introspector(config, build.shared)
        self._header = config.header.lower().encode("latin-1")
        self._forward = [(c, h.lower().encode("latin-1")) for c, h in config.forward_claims.items()]

    def credential_locations(self) -> tuple[Location, ...]:
        return (("header", self._header),)

    def strips_credential(self) -> bool:
        return not self.config.forward_token

    async def authenticate(self, ctx: RequestContext) -> Identity:
        token = single_credential(bearer_values(ctx, self._header))
        if token is None:
            raise missing()
        if len(token) > self.config.max_token_size:
            raise invalid("token_too_large")
        claims = await self.introspector.introspect(token)
        return identity_from_claims(claims, self.config.consumer_claim, self.consumers, self._forward)

    async def shutdown(self) -> None:
        await self.introspector.close()
