"""The `grpc-timeout` header (gRPC's PROTOCOL-HTTP2.md), no I/O: at most eight digits and one unit (H, M, S,
m, u, n). The gateway sends its route deadline to gRPC upstreams this way."""

from __future__ import annotations

_UNIT_SECONDS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_MAX_TIMEOUT_VALUE = 99_999_999  # eight digits


def parse_timeout(value: bytes) -> float | None:
    """A `grpc-timeout` value in seconds, or None when it is malformed."""
    value = value.strip()
    digits, unit = value[:-1], value[-1:]
    if not (1 <= len(digits) <= 8 and digits.isdigit()) or unit not in _UNIT_SECONDS:
        return None
    return int(digits) * _UNIT_SECONDS[unit]


def format_timeout(milliseconds: int) -> bytes:
    """`grpc-timeout` for a deadline in whole milliseconds: milliseconds while they fit eight digits (27
    hours), then coarser units rounded down, so the upstream is never promised more time than it has."""
    if milliseconds <= _MAX_TIMEOUT_VALUE:
        return b"%dm" % max(0, milliseconds)
    seconds = milliseconds // 1000
    if seconds <= _MAX_TIMEOUT_VALUE:
        return b"%dS" % seconds
    return b"%dH" % min(seconds // 3600, _MAX_TIMEOUT_VALUE)
