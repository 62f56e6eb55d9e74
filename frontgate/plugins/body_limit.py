"""body_limit: lower `server.limits.max_body_bytes` for one route. Enforced by the core, before reading."""

from __future__ import annotations

from pydantic import Field

from frontgate.config.schema import Size
from frontgate.plugins.base import Plugin, PluginConfig


class BodyLimitConfig(PluginConfig):
    value: Size = Field(description="Largest request body accepted on the route; 413 beyond.")


class BodyLimitPlugin(Plugin):
    """Has no hooks: the compiler reads `config.value` into the route, and the connection enforces it."""

    name = "body_limit"
    priority = 0
    Config = BodyLimitConfig
    config: BodyLimitConfig
