"""What plugins share: reading the files their settings name (schemas, allow-lists, descriptor sets, JWKS)
when the config loads, and for those that read bodies, media types and the error for a body they refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from frontgate.errors import BadRequest


def media_type(content_type: bytes | None) -> bytes:
    """`application/json; charset=utf-8` -> `application/json` (lowercase; empty when there is none)."""
    return (content_type or b"").split(b";", 1)[0].strip().lower()


def is_json(media: bytes) -> bool:
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class BodyRefused(BadRequest):
    """A request body a plugin refuses (400). The body was read whole, so the connection is still in step
    and stays open, unlike other 400s."""

    code = "invalid_body"
    close_connection = False


def read_bytes_file(path: str, field: str) -> bytes:
    """The bytes of `path`; a ValueError naming `field` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {field} {path!r}: {exc.strerror or exc}") from exc


def read_json_file(path: str, field: str) -> Any:
    """The JSON in `path`; a ValueError naming `field` (the setting) when it cannot be read or parsed, which
    `frontgate validate` reports at that setting's line."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {field} {path!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{field} {path!r} is not JSON: {exc}") from exc
