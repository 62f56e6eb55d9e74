"""Weighted upstream splits (canaries) and sticky cohorts (`to:` lists and `sticky_on`, SPEC §2 routes).

Without a sticky key a request goes to a weighted random upstream. With one, the key is hashed with a
stable hash (BLAKE2b, never Python's per-process salted `hash()`) to a point in [0, total weight), and the
point falls into one upstream's stretch of the cumulative weights. So the same key lands on the same side in
every worker, replica and restart, and when a weight changes only the keys in the stretch that moved change
side: going from 95/5 to 90/10 moves about 5% of keys from the first upstream to the second, no others.
"""

from __future__ import annotations

import json
import random
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from hashlib import blake2b
from typing import Any

Headers = Sequence[tuple[bytes, bytes]]
StickyKey = Callable[[Headers, str, Mapping[str, Any] | None], bytes | None]
"""(request headers with lowercase names, client IP, JWT claims or None) -> the cohort key, or None."""


def stable_point(key: bytes, total: int) -> int:
    """A point in [0, total) from the key; the same for the same key on every machine, forever."""
    digest = int.from_bytes(blake2b(key, digest_size=8).digest(), "big")
    # Scale instead of `% total`: the point keeps its place as the total changes, so keys move little.
    return (digest * total) >> 64


class UpstreamSplit:
    """Picks an upstream name from weighted choices, randomly or by a sticky key."""

    __slots__ = ("_bounds", "_names", "_random", "_single", "_total", "choices")

    def __init__(self, choices: Sequence[tuple[str, int]], *, rand: Callable[[], float] = random.random) -> None:
        if any(weight < 0 for _, weight in choices):
            raise ValueError("upstream weights must not be negative")
        live = [(name, weight) for name, weight in choices if weight > 0]  # weight 0: drained, never picked
        if not live:
            raise ValueError("an upstream split needs a positive total weight")
        self.choices = tuple(choices)
        self._names = tuple(name for name, _ in live)
        self._single = self._names[0] if len(set(self._names)) == 1 else None
        cumulative: list[int] = []
        total = 0
        for _, weight in live:
            total += weight
            cumulative.append(total)
        self._total = total
        # Upper bounds of every stretch but the last: bisecting them can never run off the end.
        self._bounds = tuple(cumulative[:-1])
        self._random = rand

    def pick(self, sticky_key: bytes | None = None) -> str:
        """The upstream for this request: stable for a key, weighted random without one."""
        if self._single is not None:
            return self._single
        if sticky_key is None:
            point: float = self._random() * self._total
        else:
            point = stable_point(sticky_key, self._total)
        return self._names[bisect_right(self._bounds, point)]

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={weight}" for name, weight in self.choices)
        return f"UpstreamSplit({inner})"


def sticky_key_from(spec: str | None) -> StickyKey:
    """The cohort key function for a `sticky_on` value: ip, header:NAME, cookie:NAME or jwt.CLAIM.

    Every function returns None when the request has no such value (or it is empty): a random pick, then.
    """
    if spec is None:
        return _no_key
    if spec == "ip":
        return _ip_key
    kind, _, name = spec.partition(":")
    if kind == "header" and name:
        return _header_key(name.lower().encode("ascii"))
    if kind == "cookie" and name:
        return _cookie_key(name.encode("ascii"))
    if spec.startswith("jwt.") and len(spec) > 4:
        return _claim_key(spec[4:])
    raise ValueError(f"invalid sticky_on {spec!r}: expected ip, header:NAME, cookie:NAME or jwt.CLAIM")


def _no_key(headers: Headers, client_ip: str, claims: Mapping[str, Any] | None) -> bytes | None:
    return None


def _ip_key(headers: Headers, client_ip: str, claims: Mapping[str, Any] | None) -> bytes | None:
    return client_ip.encode("ascii") or None


def _header_key(name: bytes) -> StickyKey:
    def key(headers: Headers, client_ip: str, claims: Mapping[str, Any] | None) -> bytes | None:
        for have, value in headers:
            if have == name:
                return value or None
        return None

    return key


def _cookie_key(name: bytes) -> StickyKey:
    def key(headers: Headers, client_ip: str, claims: Mapping[str, Any] | None) -> bytes | None:
        for have, value in headers:
            if have == b"cookie":  # HTTP/2 may send one cookie header per cookie: look at each
                for pair in value.split(b";"):
                    cookie_name, sep, cookie_value = pair.strip().partition(b"=")
                    if sep and cookie_name == name:
                        return cookie_value.strip(b'"') or None
        return None

    return key


def _claim_key(claim: str) -> StickyKey:
    path = claim.split(".")

    def key(headers: Headers, client_ip: str, claims: Mapping[str, Any] | None) -> bytes | None:
        if claims is None:
            return None
        # A claim name may itself hold dots (`https://example.com/tenant`): try it whole, then as a path.
        value = claims[claim] if claim in claims else _dig(claims, path)
        return _claim_bytes(value)

    return key


def _dig(claims: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _claim_bytes(value: Any) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.encode()
    # Numbers, lists, objects: a canonical JSON spelling, so equal claims always give equal keys.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
