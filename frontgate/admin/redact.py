"""The running config as /config shows it: every value that could be a secret replaced by "<redacted>".

A field is redacted when its name says secret (secret, password, token, credential, private, authorization,
cookie, a key: `key`, `keys`, `api_keys`, `client_secret`, `*_key`), whatever it holds; booleans and
numbers under such names (`forward_token: true`) say nothing secret and stay. Passwords in URLs
(`redis://:pw@host`) are cut out of every string. Names are matched case-insensitively, also as header
names inside maps (`set: {Authorization: ...}`).

Exceptions, so /config stays useful: plugin names (`api_key:` is a plugin, its settings are looked at one
by one) and a rate limit's `key` (ip, consumer, header:NAME, ...), which names what is counted.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(
    r"(secret|passw|token|credential|private|authorization|cookie|api[-_]?key|^keys?$|[-_]keys?$)", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")
_LIMIT_LISTS = frozenset({"limits", "concurrency"})


def redact(value: Any, name: str = "", parent: str = "") -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if name and _SECRET_NAME.search(name) and not _exempt(name, parent):
        return REDACTED
    if isinstance(value, dict):
        return {key: redact(item, str(key), name or parent) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, "", name) for item in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1" + REDACTED + "@", value)
    return value


def _exempt(name: str, parent: str) -> bool:
    # Plugin names (`api_key: {header: X-Api-Key}`) are not values; a rate limit's key is a selector.
    return parent == "plugins" or (name == "key" and parent in _LIMIT_LISTS)


def redacted_config(config: Any) -> Any:
    """A pydantic config model -> JSON-ready data with its secrets redacted."""
    return redact(config.model_dump(mode="json"))
