"""request_headers and response_headers: set, add, rename and remove headers on the way through."""

from __future__ import annotations

from pydantic import Field, field_validator

from frontgate.config.schema import Route
from frontgate.pipeline.context import Reply, RequestContext, ResponseHead
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_name(name: str) -> str:
    if not name or not all(ord(c) < 128 and ord(c) in _TOKEN for c in name):
        raise ValueError(f"invalid header name {name!r}")
    return name


def _check_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("header values cannot contain CR, LF or NUL")
    return value


class HeaderRulesConfig(PluginConfig):
    set: dict[str, str] = Field(default_factory=dict, description="Replace (or add) these headers.")
    add: dict[str, str] = Field(default_factory=dict, description="Append these headers.")
    rename: dict[str, str] = Field(default_factory=dict, description="Old name to new name.")
    remove: list[str] = Field(default_factory=list, description="Drop these headers.")

    @field_validator("set", "add")
    @classmethod
    def _values(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            _check_name(name)
            _check_value(header_value)
        return value

    @field_validator("rename")
    @classmethod
    def _renames(cls, value: dict[str, str]) -> dict[str, str]:
        for old, new in value.items():
            _check_name(old)
            _check_name(new)
        return value

    @field_validator("remove")
    @classmethod
    def _removes(cls, value: list[str]) -> list[str]:
        for name in value:
            _check_name(name)
        return value


class HeaderRules:
    """The rules compiled to bytes once; `apply` runs remove, rename, set, add in that order."""

    __slots__ = ("add", "drop", "rename", "set")

    def __init__(self, config: HeaderRulesConfig) -> None:
        def enc(text: str) -> bytes:
            return text.encode("latin-1")

        self.set = [(enc(k.lower()), enc(v)) for k, v in config.set.items()]
        self.add = [(enc(k.lower()), enc(v)) for k, v in config.add.items()]
        self.rename = {enc(k.lower()): enc(v.lower()) for k, v in config.rename.items()}
        # `set` replaces: drop existing copies first, so a client can never smuggle a second value.
        self.drop = frozenset(enc(n.lower()) for n in config.remove) | {k for k, _ in self.set}

    def apply(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        out = [(self.rename.get(k, k), v) for k, v in headers if k not in self.drop]
        out.extend(self.set)
        out.extend(self.add)
        return out


class RequestHeadersPlugin(Plugin):
    name = "request_headers"
    priority = 800  # after auth, so it may set headers auth plugins cleared
    Config = HeaderRulesConfig
    config: HeaderRulesConfig

    def __init__(self, config: HeaderRulesConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._rules = HeaderRules(config)

    def on_request(self, ctx: RequestContext) -> Reply | None:
        ctx.headers = self._rules.apply(ctx.headers)
        return None


class ResponseHeadersPlugin(Plugin):
    name = "response_headers"
    priority = 800
    Config = HeaderRulesConfig
    config: HeaderRulesConfig

    def __init__(self, config: HeaderRulesConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self._rules = HeaderRules(config)

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        head.headers = self._rules.apply(head.headers)
