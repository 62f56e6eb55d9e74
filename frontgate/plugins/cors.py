"""cors: let browsers on other origins call the API (the Fetch standard's CORS protocol), answered at the edge.

    cors: {origins: ["https://app.example.com", "https://*.example.com"], credentials: true, max_age: 10m}

- A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here with 204 and never
  reaches the upstream or the auth plugins: browsers send it without credentials. It is answered even on a
  route whose `methods` leave out OPTIONS (the router tries the method the browser asks about), as Kong
  users expect.
- Every other response to an allowed origin (the upstream's, and the gateway's own errors: a 401 or 429 a
  page cannot read is no use to it) gets `Access-Control-Allow-Origin`, and `-Allow-Credentials` and
  `-Expose-Headers` as configured.
- The gateway owns CORS where the plugin is on: the upstream's own `Access-Control-*` response fields are
  dropped, so no upstream can let in an origin the config does not list.
- An origin not in the list gets no CORS header at all, so the browser refuses the response; the request
  itself is served as any other (CORS protects the browser's user, not the server).
- Responses that depend on `Origin` say so (`Vary: Origin`), so a shared cache never serves one origin's
  answer to another.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import Field, field_validator

from frontgate.config.schema import Duration, Route
from frontgate.pipeline.context import Reply, RequestContext, ResponseHead
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig

DEFAULT_METHODS = ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"]
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token: a method or a header name
_TOKENS = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$")
_ORIGIN = re.compile(r"^(?:\*|null|[a-z][a-z0-9+.-]*://(?:\*\.)?[A-Za-z0-9.-]+(?::\d{1,5})?)$")
_OWNED = (b"access-control-allow-origin", b"access-control-allow-credentials", b"access-control-allow-methods",
          b"access-control-allow-headers", b"access-control-expose-headers", b"access-control-max-age")
_PREFLIGHT = "cors_preflight"  # ctx.state key: this request is a preflight the plugin answered


def is_preflight(method: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """A CORS preflight: OPTIONS with an Origin and the method the browser wants to send."""
    if method != "OPTIONS":
        return False
    names = {name for name, _ in headers}
    return b"origin" in names and b"access-control-request-method" in names


def requested_method(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"access-control-request-method":
            method = value.decode("latin-1").strip()
            return method if _TOKEN.match(method) else None
    return None


class CorsConfig(PluginConfig):
    origins: list[str] = Field(default_factory=lambda: ["*"], description=(
        "Origins allowed: exact (`https://app.example.com`), a subdomain wildcard (`https://*.example.com`) "
        "or `*` for any."))
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS),
                               description="Methods a preflight allows.")
    headers: list[str] | None = Field(None, description=(
        "Request headers a preflight allows; unset: whatever the browser asks for."))
    expose_headers: list[str] = Field(default_factory=list,
                                      description="Response headers a page may read beyond the simple ones.")
    credentials: bool = Field(False, description="Allow cookies and Authorization (the origin is then echoed).")
    max_age: Duration | None = Field(None, ge=0, description="How long a browser may keep a preflight's answer.")

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], with an optional '*.' "
                                 "before the host, or '*'")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        for method in value:
            if not _TOKEN.match(method):
                raise ValueError(f"{method!r} is not a method")
        return [method.upper() for method in value]

    @field_validator("headers", "expose_headers")
    @classmethod
    def _header_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name")
        return value


def _origin_matcher(origins: list[str]) -> Callable[[str], bool]:
    if "*" in origins:
        return lambda origin: True
    exact = frozenset(o.lower() for o in origins if "*" not in o)
    patterns = [re.compile(re.escape(o.lower()).replace(r"\*\.", r"(?:[a-z0-9-]+\.)+") + "$")
                for o in origins if "*" in o]
    if not patterns:
        return exact.__contains__
    return lambda origin: origin in exact or any(p.match(origin) for p in patterns)


class CorsPlugin(Plugin):
    name = "cors"
    priority = 2000  # before the authenticators and limits: a preflight carries no credentials
    Config = CorsConfig
    config: CorsConfig

    def __init__(self, config: CorsConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._allowed = _origin_matcher(config.origins)
        # With credentials a browser refuses `*`: the origin is echoed then.
        self._any_origin = "*" in config.origins and not config.credentials
        self._methods = ", ".join(config.methods).encode("ascii")
        self._headers = ", ".join(config.headers).encode("ascii") if config.headers is not None else None
        self._expose = ", ".join(config.expose_headers).encode("ascii")
        self._max_age = str(int(config.max_age)).encode("ascii") if config.max_age is not None else None

    def on_request(self, ctx: RequestContext) -> Reply | None:
        if ctx.method == "OPTIONS" and is_preflight(ctx.method, ctx.headers):
            if ctx.state is None:
                ctx.state = {}
            ctx.state[_PREFLIGHT] = True
            return Reply(204)  # its CORS headers are added by `on_response`, as every local reply's
        return None

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        for name in _OWNED:
            head.remove(name)
        origin_field = ctx.header(b"origin")
        preflight = ctx.state is not None and _PREFLIGHT in ctx.state
        if not self._any_origin:
            head.add(b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
                     if preflight else b"Origin")
        if origin_field is None:
            return
        origin = origin_field.decode("latin-1").strip().lower()
        if not self._allowed(origin):
            return
        head.set(b"access-control-allow-origin", b"*" if self._any_origin else origin_field.strip())
        if self.config.credentials:
            head.set(b"access-control-allow-credentials", b"true")
        if preflight:
            head.set(b"access-control-allow-methods", self._methods)
            allowed_headers = self._headers
            if allowed_headers is None:  # echo what the browser asks for, when it is a plain list of names
                asked = ctx.header(b"access-control-request-headers")
                allowed_headers = asked.strip() if asked is not None and _TOKENS.match(asked.strip()) else None
            if allowed_headers:
                head.set(b"access-control-allow-headers", allowed_headers)
            if self._max_age is not None:
                head.set(b"access-control-max-age", self._max_age)
        elif self._expose:
            head.set(b"access-control-expose-headers", self._expose)
