"""What a rate or concurrency limit counts by: `key:` compiled once into a function of the request.

The store key is `fg:rl:<limit name>:<kind>:<value>`. A limit's counter is identified by its name and the
value, so limits with the same name share one budget wherever they are declared (a global limit counts
across every route). Values longer than 64 bytes, and every API key, are stored as a BLAKE2b digest, so no
secret reaches the store and no client can grow a key without bound. A request that lacks the value a limit
keys on (no consumer, no such header or claim) is counted by its client IP instead, under a separate prefix,
so leaving a header out never escapes a limit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from frontgate.pipeline.context import RequestContext

KeyFunction = Callable[[RequestContext], bytes]

KINDS = ("ip", "consumer", "api_key", "route", "global")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CLAIM = re.compile(r"^[A-Za-z0-9_\-:/.]+$")
MAX_RAW_VALUE = 64


def check_key(value: str) -> str:
    """Validate `key:` as the config is loaded."""
    if value in KINDS:
        return value
    kind, sep, name = value.partition(":")
    if sep and kind == "header" and _TOKEN.match(name):
        return value
    if sep and kind == "claim" and _CLAIM.match(name):
        return value
    raise ValueError(
        f"invalid key {value!r}: expected ip, consumer, api_key, route, global, header:<name> or claim:<name>"
    )


def _digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).hexdigest().encode()


def _value(value: bytes) -> bytes:
    return b"v:" + value if len(value) <= MAX_RAW_VALUE else b"h:" + _digest(value)


def _by_ip(prefix: bytes) -> KeyFunction:
    prefix = prefix + b"ip:"  # as ip_key_prefix

    def key(ctx: RequestContext) -> bytes:
        return prefix + ctx.client_ip.encode()

    return key


def _claim(claims: dict[str, Any] | None, path: list[str]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _prefix(limit_name: str) -> bytes:
    return b"fg:rl:" + limit_name.encode() + b":"


def ip_key_prefix(limit_name: str) -> bytes:
    """What an `ip` key of this limit starts with (the client address follows), for a caller that builds the
    key inline."""
    return _prefix(limit_name) + b"ip:"


def key_function(limit_name: str, spec: str, api_key_header: bytes) -> KeyFunction:
    prefix = _prefix(limit_name)
    by_ip = _by_ip(prefix)
    if spec == "ip":
        return by_ip
    if spec == "global":
        constant = prefix + b"global"
        return lambda ctx: constant
    if spec == "route":
        unrouted = prefix + b"route:-"
        return lambda ctx: prefix + b"route:" + ctx.route.name.encode() if ctx.route is not None else unrouted
    if spec == "consumer":
        return lambda ctx: prefix + _value(ctx.consumer.encode()) if ctx.consumer is not None else by_ip(ctx)
    if spec == "api_key":

        def api_key(ctx: RequestContext) -> bytes:
            # The key itself (as a digest) when still on the request; once an auth plugin has hidden it,
            # the consumer it named.
            presented = ctx.header(api_key_header)
            if presented:
                return prefix + b"h:" + _digest(presented)
            if ctx.consumer is not None:
                return prefix + b"c:" + _value(ctx.consumer.encode())
            return by_ip(ctx)

        return api_key
    kind, _, name = spec.partition(":")
    if kind == "header":
        header = name.lower().encode("latin-1")

        def by_header(ctx: RequestContext) -> bytes:
            value = ctx.header(header)
            return prefix + _value(value) if value is not None else by_ip(ctx)

        return by_header
    path = name.split(".")

    def by_claim(ctx: RequestContext) -> bytes:
        value = _claim(ctx.claims, path)
        if value is None or isinstance(value, dict | list):
            return by_ip(ctx)
        return prefix + _value(str(value).encode())

    return by_claim
