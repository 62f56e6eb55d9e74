"""api_key: a key from a header (or a query parameter) names a consumer.

    consumers:
      - {name: partner-acme, groups: [partners], api_keys: ["sha256:..."]}   # `frontgate hash-key` < key.txt
    routes:
      - ...
        plugins:
          api_key: {header: X-Api-Key, hide: true}       # query_param: api_key also accepted when set

Only SHA-256 hashes of keys are in the config. The presented key is hashed and the digest looked up in a
table keyed by digests: what a timing difference could reveal is where an attacker-chosen digest falls in a
hash table with a per-process random seed, never a byte of a stored hash (and a stored hash would still
need a preimage). Two different keys in one request are refused rather than guessed between.
"""

from __future__ import annotations

import hashlib

from pydantic import Field, field_validator, model_validator

from frontgate.auth.chain import Identity
from frontgate.auth.credentials import Location, check_header_name, header_values, query_values, single_credential
from frontgate.auth.errors import AuthFailure, invalid, missing
from frontgate.config.schema import Route
from frontgate.pipeline.context import RequestContext
from frontgate.plugins.auth_base import AuthPlugin
from frontgate.plugins.base import BuildContext, PluginConfig


class ApiKeyConfig(PluginConfig):
    header: str | None = Field("X-Api-Key", description="Header carrying the key; null to use only the query.")
    query_param: str | None = Field(None, description="Also accept the key in this query parameter.")
    hide: bool = Field(False, description="Strip the key before forwarding.")

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        return None if value is None else check_header_name(value)

    @model_validator(mode="after")
    def _somewhere(self) -> ApiKeyConfig:
        if self.header is None and self.query_param is None:
            raise ValueError("api_key needs a header or a query_param")
        return self


class ApiKeyPlugin(AuthPlugin):
    name = "api_key"
    priority = 1000
    Config = ApiKeyConfig
    config: ApiKeyConfig
    scheme = b"ApiKey"

    def __init__(self, config: ApiKeyConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._header = config.header.lower().encode("latin-1") if config.header else None
        locations: list[Location] = []
        if self._header is not None:
            locations.append(("header", self._header))
        if config.query_param:
            locations.append(("query", config.query_param))
        self._locations = tuple(locations)
        where = f'header="{config.header}"' if config.header else f'query="{config.query_param}"'
        self._challenge = b"ApiKey " + where.encode("latin-1")

    def credential_locations(self) -> tuple[Location, ...]:
        return self._locations

    def strips_credential(self) -> bool:
        return self.config.hide

    def challenge(self, failure: AuthFailure) -> bytes:
        if failure.kind == "missing":
            return self._challenge
        return self._challenge + b', error="invalid_key"'

    def authenticate_now(self, ctx: RequestContext) -> Identity:
        found = []
        if self._header is not None:
            found += [v.decode("utf-8", "replace") for v in header_values(ctx, self._header)]
        if self.config.query_param and ctx.query:
            found += query_values(ctx.query, self.config.query_param)
        key = single_credential(found)
        if key is None:
            raise missing()
        consumer = self.consumers.by_key_digest(hashlib.sha256(key.encode("utf-8")).digest())
        if consumer is None:
            raise invalid("unknown_key")
        return Identity(consumer)
