"""Files that plugin settings name (schemas, allow-lists), read when the config loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
