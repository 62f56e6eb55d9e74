"""Durations (`250ms`, `2s`, `1m`, `1h`) and sizes (`16KiB`, `10MiB`) as users write them in the config."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_BYTES = {
    None: 1, "B": 1,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}


def parse_duration(value: object) -> float:
    """Return seconds. Bare numbers are seconds; strings need a unit so `5` vs `5ms` is never ambiguous."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 2s, 1m or 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    raise ValueError(f"invalid duration {value!r}: expected a number with a unit: 250ms, 2s, 1m, 1h")


def parse_size(value: object) -> int:
    """Return bytes. Accepts plain integers and `16KiB`, `10MiB`, `1GiB` (and decimal KB/MB/GB)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16KiB or 10MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_BYTES[match.group(2)])
    raise ValueError(f"invalid size {value!r}: expected bytes or a number with a unit: 16KiB, 10MiB")
