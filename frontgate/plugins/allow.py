"""allow: who may use a route, once authenticated: consumers, groups, scopes, client addresses, client
certificate subjects.

    allow: {groups: [first-party], scopes: ["orders:read"]}
    allow: {subjects: ["CN=billing.internal,O=Acme"]}      # the verified mTLS client certificate

Each list given is a condition and all conditions must hold: `consumers` and `groups` are any-of (the
consumer is one of, or in one of), `scopes` are all-of (from the `scope` claim, space-separated, or `scp`,
a list or string, or an introspection answer's `scope`), `ips` any-of, `subjects` any-of (exact, on the
normalized RFC 4514 subject: see frontgate/tls/subjects.py). No identity at all when one is needed (no
credential, no client certificate): 401. An identity without the right to the route: 403.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator

from frontgate.auth.consumers import consumer_table
from frontgate.auth.errors import Forbidden, Unauthorized
from frontgate.auth.metrics import record_failure
from frontgate.config.schema import Route
from frontgate.pipeline.context import Reply, RequestContext
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig
from frontgate.tls.subjects import normalize_subject

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: list[str]) -> list[str]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"invalid network {value!r}: expected an IP address or CIDR") from exc
    return values


def network_matcher(values: list[str]) -> Callable[[str], bool]:
    networks = tuple(ipaddress.ip_network(v, strict=False) for v in values)

    @lru_cache(maxsize=4096)
    def matches(ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in networks)

    return matches


def granted_scopes(claims: dict[str, Any] | None) -> frozenset[str]:
    if not claims:
        return frozenset()
    out: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            out.update(value.split())
        elif isinstance(value, list):
            out.update(v for v in value if isinstance(v, str))
    return frozenset(out)


class AllowConfig(PluginConfig):
    consumers: list[str] = Field(default_factory=list, description="Any of these consumers.")
    groups: list[str] = Field(default_factory=list, description="A consumer in any of these groups.")
    scopes: list[str] = Field(default_factory=list, description="All of these scopes.")
    ips: list[str] = Field(default_factory=list, description="Client addresses or CIDRs (any of).")
    subjects: list[Annotated[str, AfterValidator(normalize_subject)]] = Field(
        default_factory=list, description="Verified client certificate subjects, RFC 4514 (any of)."
    )

    @field_validator("ips")
    @classmethod
    def _ips(cls, value: list[str]) -> list[str]:
        return parse_networks(value)


class AllowPlugin(Plugin):
    name = "allow"
    priority = 950  # after every authenticator
    Config = AllowConfig
    config: AllowConfig

    def __init__(self, config: AllowConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._table = consumer_table(build.shared, build.gateway.consumers)
        self._consumers = frozenset(config.consumers)
        self._groups = frozenset(config.groups)
        self._scopes = frozenset(config.scopes)
        self._ips = network_matcher(config.ips) if config.ips else None
        self._subjects = frozenset(config.subjects)
        self._needs_identity = bool(self._consumers or self._groups or self._scopes)
        wanted = " ".join(sorted(self._scopes)).encode("utf-8")
        self._scope_challenge = b'Bearer error="insufficient_scope", scope="' + wanted + b'"'

    def _deny(self, ctx: RequestContext, reason: str, challenge: bytes | None = None) -> Forbidden:
        record_failure(ctx, self.name, reason)
        return Forbidden(headers=[(b"www-authenticate", challenge)] if challenge else None)

    def on_request(self, ctx: RequestContext) -> Reply | None:
        if self._ips is not None and not self._ips(ctx.client_ip):
            raise self._deny(ctx, "ip_not_allowed")
        if self._subjects:
            cert = ctx.client_cert
            if cert is None:
                record_failure(ctx, self.name, "no_client_certificate")
                raise Unauthorized(headers=[(b"www-authenticate", b"ClientCertificate")])
            if cert.subject not in self._subjects:
                raise self._deny(ctx, "subject_not_allowed")
        if not self._needs_identity:
            return None
        consumer = ctx.consumer
        if consumer is None and ctx.claims is None:
            record_failure(ctx, self.name, "unauthenticated")
            raise Unauthorized(headers=[(b"www-authenticate", b"Bearer")])
        if self._consumers and consumer not in self._consumers:
            raise self._deny(ctx, "consumer_not_allowed")
        if self._groups:
            info = self._table.get(consumer) if consumer is not None else None
            if info is None or not (info.groups & self._groups):
                raise self._deny(ctx, "group_not_allowed")
        if self._scopes and not self._scopes <= granted_scopes(ctx.claims):
            raise self._deny(ctx, "insufficient_scope", self._scope_challenge)
        return None
