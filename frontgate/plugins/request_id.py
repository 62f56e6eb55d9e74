"""request_id: give every request an id, forward it upstream and echo it to the client."""

from __future__ import annotations

import re

from pydantic import Field

from frontgate.config.schema import Route
from frontgate.pipeline.context import Reply, RequestContext, ResponseHead
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig

# An incoming id is kept only if it is short and plain: it ends up in logs and other services' headers.
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestIdConfig(PluginConfig):
    header: str = Field("X-Request-Id", description="Header carrying the id, both ways.")
    trust_incoming: bool = Field(False, description="Keep a well-formed id sent by the client.")
    echo: bool = Field(True, description="Add the id to the response.")


class RequestIdPlugin(Plugin):
    name = "request_id"
    priority = 100_000  # first: every later plugin and error reply can cite the id
    Config = RequestIdConfig
    config: RequestIdConfig

    def __init__(self, config: RequestIdConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._header = config.header.lower().encode("latin-1")

    def on_request(self, ctx: RequestContext) -> Reply | None:
        incoming = ctx.header(self._header)
        if incoming is not None and self.config.trust_incoming and _SAFE_ID.match(incoming):
            ctx.request_id = incoming.decode("ascii")
            return None
        ctx.set_header(self._header, ctx.request_id.encode("ascii"))
        return None

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        if self.config.echo:
            head.set(self._header, ctx.request_id.encode("ascii"))
