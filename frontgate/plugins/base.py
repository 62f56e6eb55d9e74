"""The plugin contract (after Kong's handler + schema and Envoy's filters).

A plugin is built once per config generation with its validated `Config`; per-request state lives on the
`RequestContext`. Request hooks run in descending `priority`, response hooks in the reverse order. A plugin
implements only the hooks it needs: the chain is compiled from the overridden methods, so an unused hook
costs nothing per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from frontgate.config.schema import GatewayConfig, Route
from frontgate.pipeline.context import HookResult, Reply, RequestContext, RequestHook, RequestSummary, ResponseHead


class PluginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True


@dataclass
class BuildContext:
    """What plugins of one config generation share: the whole validated config (consumers, store settings)
    and a place for resources built once and used by many plugin instances (a store client, a JWKS cache),
    keyed by whatever the plugin module chooses."""

    gateway: GatewayConfig
    shared: dict[str, Any] = field(default_factory=dict)


class Plugin:
    name: ClassVar[str]
    priority: ClassVar[int]  # higher runs earlier on the request
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig, route: Route | None, build: BuildContext) -> None:
        """Built once per route (or once for unrouted requests, with `route` None) per config generation."""
        self.config = config
        self.route = route
        self.build = build

    def on_request(self, ctx: RequestContext) -> HookResult:
        """Inspect or change the request; return a Reply (or raise an HttpError) to answer it here. A hook
        that must wait (I/O) is an `async def`, or returns an awaitable only when it has to wait: a plain
        return costs no coroutine (see frontgate/pipeline/context.py `HookResult`)."""
        return None

    def request_hook(self) -> RequestHook:
        """What the chain calls per request: `on_request`, unless the plugin compiles something leaner for its
        config."""
        return self.on_request

    # A plugin that implements `on_body` makes its routes read request bodies whole (up to this many bytes;
    # 413 beyond) before anything goes upstream. Everything else streams.
    body_limit: int = 1024 * 1024
    # With `on_response_body`: True, every response is held whole (502 beyond `body_limit`: the plugin
    # cannot do without it); False, only those a request hook asks for (`ctx.hold_response`), and one
    # larger than the limit streams on untouched.
    hold_whole_response = True

    def on_body(self, ctx: RequestContext, body: bytes) -> Reply | bytes | None:
        """The whole request body (after every request hook): inspect it; return a Reply (or raise an
        HttpError) to answer here, or bytes to send upstream instead (with their own Content-Length; set
        the Content-Type to match with `ctx.set_header`). None sends the body on unchanged."""
        return None

    def on_response_body(self, ctx: RequestContext, head: ResponseHead, body: bytes) -> bytes:
        """The whole upstream response body (a plugin implementing this makes its routes hold responses
        until complete, up to `body_limit`; 502 beyond). Return the body to send; `head` may be changed
        (its Content-Length is set from what is returned). Not called for HEAD, 1xx, 204 and 304."""
        return body

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        """Change the response status line or headers before they are written."""

    def on_log(self, ctx: RequestContext, summary: RequestSummary) -> None:
        """The request is over (every request that reached this plugin's route, however it ended): count it,
        release per-request resources (a concurrency slot), log it. Must not block."""

    async def startup(self) -> None:
        """Acquire shared resources (connections, background refreshers) for this config generation."""

    async def shutdown(self) -> None:
        """Release what startup acquired."""

    @classmethod
    def implements(cls, hook: str) -> bool:
        return getattr(cls, hook) is not getattr(Plugin, hook)

    def uses(self, hook: str) -> bool:
        """Should the chain call `hook` on this instance? By default when the class implements it; a plugin
        whose config leaves a hook with nothing to do says no, so the hook costs nothing per request."""
        return self.implements(hook)
