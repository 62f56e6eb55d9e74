"""jwt: verify a bearer JWT against configured keys (inline, a JWKS file or a JWKS URL), map it to a consumer
and forward chosen claims as headers.

    jwt:
      issuer: "https://auth.example.com/"
      audiences: [api.example.com]
      jwks_url: "https://auth.example.com/.well-known/jwks.json"   # or keys: [...] / jwks_file: jwks.json
      algorithms: [RS256, ES256]
      clock_skew: 60s
      max_lifetime: 1h
      consumer_claim: azp
      forward_claims: {sub: X-User-Id, tenant: X-Tenant}           # forward_token: true keeps the raw token

More issuers on one route: `issuers: [{issuer: ..., jwks_url: ...}, ...]` (each may set its own
`audiences` and keys); the token's `iss` picks which one's keys are tried, and is then checked exactly.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from frontgate.auth.chain import CONSUMER_HEADER, HeaderChanges, Identity
from frontgate.auth.credentials import (
    HeaderName,
    Location,
    bearer_values,
    cookie_values,
    query_values,
    single_credential,
)
from frontgate.auth.errors import AuthFailure, missing
from frontgate.auth.jose import (
    ALGORITHMS,
    HMAC_ALGORITHMS,
    JoseError,
    VerifyKey,
    json_object,
    key_from_jwk,
    key_from_pem,
    make_key,
    usable_jwks,
)
from frontgate.auth.jwks import KeySource, StaticKeys, jwks_source
from frontgate.auth.jwt_verify import IssuerPolicy, JwtVerifier, VerifiedToken
from frontgate.config.schema import Duration, Route, Size
from frontgate.pipeline.context import HookResult, RequestContext
from frontgate.plugins.auth_base import AuthPlugin, identity_from_claims
from frontgate.plugins.base import BuildContext, PluginConfig
from frontgate.plugins.shared import read_bytes_file


def parse_inline_key(entry: dict[str, Any] | str) -> VerifyKey:
    """A `keys:` entry: a JWK object, a PEM public key, or an HMAC secret (any other string, >= 32 bytes)."""
    if isinstance(entry, dict):
        return key_from_jwk(entry, allow_secret=True)
    if entry.lstrip().startswith("-----BEGIN"):
        return key_from_pem(entry)
    return make_key(entry.encode("utf-8"))


def read_jwks_file(path: str) -> list[VerifyKey]:
    raw = read_bytes_file(path, "jwks_file")
    try:
        keys, skipped = usable_jwks(json_object(raw), allow_secret=True)
    except JoseError as exc:
        raise ValueError(f"jwks_file {path!r}: {exc}") from exc
    if skipped:
        raise ValueError(f"jwks_file {path!r}: " + "; ".join(skipped))
    return keys


class KeySources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[dict[str, Any] | str] = Field(
        default_factory=list, description="JWKs, PEM public keys, or HMAC secrets (at least 32 bytes)."
    )
    jwks_file: str | None = Field(None, description="A JWKS JSON file, read at load and reload.")
    jwks_url: str | None = Field(None, description="A JWKS URL, fetched in the background.")

    @field_validator("keys")
    @classmethod
    def _keys(cls, value: list[dict[str, Any] | str]) -> list[dict[str, Any] | str]:
        for index, entry in enumerate(value):
            try:
                parse_inline_key(entry)
            except JoseError as exc:
                raise ValueError(f"keys[{index}]: {exc}") from None
        return value

    @field_validator("jwks_file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        if value is not None:
            read_jwks_file(value)
        return value

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"invalid jwks_url {value!r}: expected an http(s) URL")
        return value

    def has_keys(self) -> bool:
        return bool(self.keys or self.jwks_file or self.jwks_url)

    def has_secret(self) -> bool:
        return any(parse_inline_key(k).family == "oct" for k in self.keys)


class JwtIssuer(KeySources):
    issuer: str = Field(min_length=1)
    audiences: list[str] | None = Field(None, description="Default: the plugin's audiences.")

    @model_validator(mode="after")
    def _needs_keys(self) -> JwtIssuer:
        if not self.has_keys():
            raise ValueError("an issuer needs keys, jwks_file or jwks_url")
        return self


class JwtConfig(PluginConfig, KeySources):
    issuer: str | None = Field(None, description="Exact `iss`; unchecked when absent (inline keys only).")
    audiences: list[str] = Field(default_factory=list, description="`aud` must hold one of these.")
    issuers: list[JwtIssuer] = Field(default_factory=list, description="More issuers, picked by `iss`.")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    clock_skew: Duration = Field(60.0, ge=0, le=600)
    max_lifetime: Duration | None = Field(None, gt=0, description="Refuse tokens valid for longer (exp - iat).")
    consumer_claim: str | None = Field(None, description="Claim whose value names a consumer.")
    forward_claims: dict[str, HeaderName] = Field(default_factory=dict, description="Claim to upstream header.")
    forward_token: bool = Field(False, description="Keep the raw token in the forwarded request.")
    header: HeaderName = Field("Authorization", description="Header carrying `Bearer <token>`.")
    query_param: str | None = Field(None, description="Also accept the token in this query parameter.")
    cookie: str | None = Field(None, description="Also accept the token in this cookie.")
    jwks_refresh: Duration = Field(300.0, ge=1, description="Background JWKS refresh interval.")
    jwks_cooldown: Duration = Field(5.0, ge=0, description="At most one fetch per this on unknown kids.")
    jwks_timeout: Duration = Field(5.0, gt=0)
    max_token_size: Size = Field(8 * 1024, gt=0, description="Longer tokens are refused unparsed.")
    cache_size: int = Field(10_000, ge=0, description="Verified tokens kept (until their exp).")

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("'none' is never allowed: an unsigned token proves nothing")
            if alg not in ALGORITHMS:
                raise ValueError(f"unknown algorithm {alg!r} (known: {', '.join(sorted(ALGORITHMS))})")
        return value


    @model_validator(mode="after")
    def _consistent(self) -> JwtConfig:
        if not self.has_keys() and not self.issuers:
            raise ValueError("jwt needs keys, jwks_file, jwks_url or issuers")
        if self.issuers and self.has_keys() and self.issuer is None:
            raise ValueError("with several issuers, the top-level keys need an `issuer` too")
        if self.jwks_url and (self.keys or self.jwks_file):
            raise ValueError("use either jwks_url or keys/jwks_file for one issuer, not both")
        secrets = self.has_secret() or any(i.has_secret() for i in self.issuers)
        wants_hmac = any(a in HMAC_ALGORITHMS for a in self.algorithms)
        if wants_hmac and not secrets:
            raise ValueError("HS256/384/512 need a secret in keys")
        if secrets and not wants_hmac:
            raise ValueError("a secret in keys is only used with HS256/384/512 in algorithms")
        return self


def _source(sources: KeySources, config: JwtConfig, shared: dict[str, Any]) -> KeySource:
    if sources.jwks_url:
        return jwks_source(shared, sources.jwks_url, config.jwks_refresh, config.jwks_cooldown, config.jwks_timeout)
    keys = [parse_inline_key(k) for k in sources.keys]
    if sources.jwks_file:
        keys += read_jwks_file(sources.jwks_file)
    return StaticKeys(keys)


def build_verifier(config: JwtConfig, shared: dict[str, Any]) -> JwtVerifier:
    """One verifier (and token cache) per distinct jwt config in a generation: routes sharing a YAML
    anchor share it."""
    verifiers: dict[str, JwtVerifier] = shared.setdefault("auth.jwt_verifiers", {})
    key = config.model_dump_json()
    verifier = verifiers.get(key)
    if verifier is None:
        policies = []
        if config.has_keys():
            policies.append(IssuerPolicy(config.issuer, frozenset(config.audiences), _source(config, config, shared)))
        for extra in config.issuers:
            audiences = extra.audiences if extra.audiences is not None else config.audiences
            policies.append(IssuerPolicy(extra.issuer, frozenset(audiences), _source(extra, config, shared)))
        verifier = verifiers[key] = JwtVerifier(
            policies,
            frozenset(config.algorithms),
            clock_skew=config.clock_skew,
            max_lifetime=config.max_lifetime,
            max_token_bytes=config.max_token_size,
            cache_size=config.cache_size,
        )
    return verifier


class JwtPlugin(AuthPlugin):
    name = "jwt"
    priority = 1100
    Config = JwtConfig
    config: JwtConfig

    def __init__(self, config: JwtConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self.verifier = build_verifier(config, build.shared)
        self._header = config.header.lower().encode("latin-1")
        self._forward = [(c, h.lower().encode("latin-1")) for c, h in config.forward_claims.items()]
        locations: list[Location] = [("header", self._header)]
        if config.query_param:
            locations.append(("query", config.query_param))
        if config.cookie:
            locations.append(("cookie", config.cookie))
        self._locations = tuple(locations)

    def credential_locations(self) -> tuple[Location, ...]:
        return self._locations

    def strips_credential(self) -> bool:
        return not self.config.forward_token

    @cached_property
    def _scan(self) -> tuple[tuple[bytes, ...], bytes, bool, frozenset[bytes]] | None:
        """For `on_request`'s pass over the header lines, when a token can only come in a header (no query or
        cookie): (the prefixes of the lines it sets aside, the token header's, whether the token is forwarded,
        the headers `apply` drops besides those it sets)."""
        if self.config.query_param or self.config.cookie:
            return None
        prefix = self._header + b": "
        dropped, _ = self._stripped
        return tuple({prefix, *(name + b": " for name in dropped)}), prefix, not self.strips_credential(), dropped

    def on_request(self, ctx: RequestContext) -> HookResult:
        # The usual request: one token header, whose token was verified before. One pass over the header lines
        # finds that line and leaves out what `apply` would drop (the token unless forwarded, the client's
        # copies of gateway headers when this hook comes first); the line itself is the cache key, and what
        # the token means for this hook was worked out with it. Anything else takes the general path.
        scan = self._scan
        if scan is not None and ctx.consumer is None:
            prefixes, prefix, forward, dropped = scan
            kept: list[bytes] = []
            found = None
            more = False
            for line in ctx.header_lines():
                if not line.startswith(prefixes):
                    kept.append(line)
                elif line.startswith(prefix):
                    more = found is not None
                    found = line
                    if forward:
                        kept.append(line)
            if found is not None and not more:
                verified = self.verifier.cached(found)
                if verified is not None:
                    outcome = verified.memo.get(dropped) or self._outcome(verified, dropped)
                    if outcome is not None:  # as `apply` does, with nothing to check or strip elsewhere
                        identity, changes = outcome
                        if changes.extra:
                            kept = [line for line in kept if not line.startswith(changes.extra)]
                        kept += changes.add
                        ctx.set_header_lines(kept)
                        ctx.consumer = identity.consumer
                        if ctx.claims is None:
                            ctx.claims = identity.claims
                        return None
        return super().on_request(ctx)

    def _outcome(self, verified: VerifiedToken, dropped: frozenset[bytes]) -> tuple[Identity, HeaderChanges] | None:
        """The identity and header changes of a verified token for `on_request`, kept with the token; None when its
        claims make no identity (the general path refuses it)."""
        try:
            identity = self._identity(verified)
        except AuthFailure:
            return None
        outcome = verified.memo[dropped] = identity, identity.header_changes(dropped, CONSUMER_HEADER)
        return outcome

    def token(self, ctx: RequestContext) -> str | None:
        found = bearer_values(ctx, self._header)
        if self.config.query_param and ctx.query:
            found += query_values(ctx.query, self.config.query_param)
        if self.config.cookie:
            found += cookie_values(ctx, self.config.cookie)
        return single_credential(found)

    def credential(self, ctx: RequestContext) -> tuple[str, str | bytes]:
        """The request's token (`AuthFailure` when there is none or several) and the key its verification is
        cached under: the header line it came in when that line alone may carry a token (what `on_request`
        looks up), else the token itself."""
        token = self.token(ctx)
        if token is None:
            raise missing()
        if self._scan is not None:
            prefix = self._scan[1]
            lines = [line for line in ctx.header_lines() if line.startswith(prefix)]
            if len(lines) == 1:
                return token, lines[0]
        return token, token

    def authenticate_now(self, ctx: RequestContext) -> Identity | None:
        verified = self.verifier.cached(self.credential(ctx)[1])
        return None if verified is None else self._identity(verified)

    async def authenticate(self, ctx: RequestContext) -> Identity:
        return self._identity(await self.verifier.verify(*self.credential(ctx)))

    def _identity(self, verified: VerifiedToken) -> Identity:
        # Worked out once per verified token: a cached token's identity serves every request carrying it (the
        # routes sharing this verifier share the jwt config, so the same consumer and forwarded claims).
        identity = verified.memo.get("identity")
        if not isinstance(identity, Identity):
            identity = verified.memo["identity"] = identity_from_claims(
                verified.claims, self.config.consumer_claim, self.consumers, self._forward)
        return identity

    async def startup(self) -> None:
        for policy in self.verifier.issuers:
            await policy.source.start()

    async def shutdown(self) -> None:
        for policy in self.verifier.issuers:
            await policy.source.stop()
