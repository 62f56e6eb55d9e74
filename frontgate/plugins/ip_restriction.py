"""ip_restriction: refuse (403) clients by address before anything else on the route runs.

    ip_restriction: {allow: [10.0.0.0/8, 192.0.2.7], deny: [10.6.6.0/24]}

`deny` wins over `allow`; with an `allow` list, every other address is refused. The address is the client's
as the gateway sees it (X-Forwarded-For is believed only from `server.trusted_proxies`).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from frontgate.auth.errors import Forbidden
from frontgate.auth.metrics import record_failure
from frontgate.config.schema import Route
from frontgate.pipeline.context import Reply, RequestContext
from frontgate.plugins.allow import network_matcher, parse_networks
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig


class IpRestrictionConfig(PluginConfig):
    allow: list[str] = Field(default_factory=list, description="Only these addresses or CIDRs.")
    deny: list[str] = Field(default_factory=list, description="Never these (wins over allow).")

    @field_validator("allow", "deny")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return parse_networks(value)

    @model_validator(mode="after")
    def _something(self) -> IpRestrictionConfig:
        if not self.allow and not self.deny:
            raise ValueError("ip_restriction needs allow or deny")
        return self


class IpRestrictionPlugin(Plugin):
    name = "ip_restriction"
    priority = 1200  # before the authenticators: a refused address costs no token check
    Config = IpRestrictionConfig
    config: IpRestrictionConfig

    def __init__(self, config: IpRestrictionConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._allow = network_matcher(config.allow) if config.allow else None
        self._deny = network_matcher(config.deny) if config.deny else None

    def on_request(self, ctx: RequestContext) -> Reply | None:
        ip = ctx.client_ip
        if (self._deny is not None and self._deny(ip)) or (self._allow is not None and not self._allow(ip)):
            record_failure(ctx, self.name, "ip_denied")
            raise Forbidden("Requests from this address are not allowed.")
        return None
