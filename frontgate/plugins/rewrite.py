"""rewrite: change the path sent upstream (strip the matched route prefix, add a prefix)."""

from __future__ import annotations

from pydantic import Field, field_validator

from frontgate.config.schema import Route
from frontgate.pipeline.context import Reply, RequestContext
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig


class RewriteConfig(PluginConfig):
    strip_prefix: bool = Field(False, description="Remove the route's matched path prefix.")
    prefix: str = Field("", description="Prepend this path, e.g. /v1.")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and (not value.startswith("/") or "?" in value or "#" in value):
            raise ValueError("prefix must be a path starting with / (no query)")
        return value.rstrip("/")


class RewritePlugin(Plugin):
    name = "rewrite"
    priority = 700
    Config = RewriteConfig
    config: RewriteConfig

    def __init__(self, config: RewriteConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        # Longest first, so /orders/v2 is stripped before /orders.
        prefixes = route.match.paths if route is not None else []
        self._prefixes = sorted((p.rstrip("/") for p in prefixes), key=len, reverse=True)

    def on_request(self, ctx: RequestContext) -> Reply | None:
        path = ctx.upstream_path
        if self.config.strip_prefix:
            for prefix in self._prefixes:
                if path == prefix or path.startswith(prefix + "/"):
                    path = path[len(prefix) :] or "/"
                    break
        if self.config.prefix:
            path = self.config.prefix + path if path != "/" else self.config.prefix + "/"
        ctx.upstream_path = path
        return None
