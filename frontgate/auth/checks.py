"""Config checks that need the whole validated file: consumer names and key hashes are unique, and
`auth_any` names auth plugins that are on the route. Each problem is (field path segments, message), placed
at its line by the loader."""

from __future__ import annotations

from typing import Any

from frontgate.config.schema import GatewayConfig

AUTH_PLUGIN_NAMES = ("jwt", "api_key", "oauth2_introspection", "mtls")

Segments = list[str | int]


def _disabled(settings: object) -> bool:
    return isinstance(settings, dict) and settings.get("enabled") is False


def auth_problems(config: GatewayConfig) -> list[tuple[Segments, str]]:
    problems: list[tuple[Segments, str]] = []
    names: dict[str, int] = {}
    keys: dict[str, str] = {}
    subjects: dict[str, str] = {}
    for index, consumer in enumerate(config.consumers):
        if consumer.name in names:
            problems.append((["consumers", index, "name"], f"duplicate consumer name '{consumer.name}'"))
        names.setdefault(consumer.name, index)
        for k, digest in enumerate(consumer.api_keys):
            owner = keys.setdefault(digest, consumer.name)
            if owner != consumer.name or consumer.api_keys.index(digest) != k:
                problems.append((["consumers", index, "api_keys", k], f"this key hash is already consumer '{owner}''s"))
        for k, subject in enumerate(consumer.mtls_subjects):
            owner = subjects.setdefault(subject, consumer.name)
            if owner != consumer.name:
                problems.append((["consumers", index, "mtls_subjects", k],
                                 f"subject '{subject}' already names consumer '{owner}'"))
    sections: list[tuple[Segments, dict[str, Any]]] = [(["plugins"], config.plugins)]
    sections += [(["routes", i, "plugins"], route.plugins) for i, route in enumerate(config.routes)]
    for path, section in sections:
        allow = section.get("allow")
        wanted = allow.get("consumers") if isinstance(allow, dict) else None
        for k, name in enumerate(wanted if isinstance(wanted, list) else []):
            if name not in names:
                problems.append(([*path, "allow", "consumers", k], f"unknown consumer '{name}'"))
    for index, route in enumerate(config.routes):
        seen: set[str] = set()
        for k, name in enumerate(route.auth_any):
            where: Segments = ["routes", index, "auth_any", k]
            if name not in AUTH_PLUGIN_NAMES:
                problems.append((where, f"'{name}' is not an auth plugin ({', '.join(AUTH_PLUGIN_NAMES)})"))
            elif name in seen:
                problems.append((where, f"'{name}' is listed twice"))
            elif _disabled(route.plugins.get(name)) or (name not in route.plugins and name not in config.plugins):
                problems.append((where, f"'{name}' is not configured on this route; add it under plugins:"))
            seen.add(name)
    return problems
