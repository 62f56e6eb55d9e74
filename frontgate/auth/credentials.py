"""Finding credentials in a request (header, query parameter, cookie), removing them before forwarding, and
turning verified claims into upstream header values.

A location is `("header", b"authorization")`, `("query", "api_key")` or `("cookie", "session")`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import unquote_plus

from pydantic import AfterValidator

from frontgate.auth.errors import invalid
from frontgate.pipeline.context import RequestContext

Location = tuple[Literal["header", "query", "cookie"], bytes | str]


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def check_header_name(name: str) -> str:
    """For config validators: a header name is an RFC 9110 token."""
    if not name or any(c not in _TOKEN_CHARS for c in name):
        raise ValueError(f"invalid header name {name!r}")
    return name


HeaderName = Annotated[str, AfterValidator(check_header_name)]
"""A header name in a plugin's config, checked to be a valid token."""


def header_values(ctx: RequestContext, name: bytes) -> list[bytes]:
    """Every value of a header (`name` lowercase), read from the ready-made header lines."""
    prefix = name + b": "
    size = len(prefix)
    return [line[size:-2] for line in ctx.header_lines() if line.startswith(prefix)]


def rewrite_headers(ctx: RequestContext, drop: tuple[bytes, ...], add: Sequence[bytes]) -> None:
    """Drop the header lines starting with any of `drop` (`b"name: "` prefixes) and append `add` lines."""
    lines = [line for line in ctx.header_lines() if not line.startswith(drop)] if drop else list(ctx.header_lines())
    lines += add
    ctx.set_header_lines(lines)


def query_values(query: bytes, name: str) -> list[str]:
    if not query:
        return []
    out = []
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if unquote_plus(key.decode("latin-1")) == name:
            out.append(unquote_plus(value.decode("latin-1"), encoding="utf-8", errors="replace"))
    return out


def remove_query_param(query: bytes, name: str) -> bytes:
    return b"&".join(
        p for p in query.split(b"&") if p and unquote_plus(p.partition(b"=")[0].decode("latin-1")) != name
    )


def _cookie_pairs(value: bytes) -> list[tuple[str, str]]:
    pairs = []
    for item in value.decode("latin-1").split(";"):
        key, sep, val = item.strip().partition("=")
        if sep:
            pairs.append((key.strip(), val.strip().strip('"')))
    return pairs


def cookie_values(ctx: RequestContext, name: str) -> list[str]:
    return [v for raw in header_values(ctx, b"cookie") for k, v in _cookie_pairs(raw) if k == name]


def remove_cookie(ctx: RequestContext, name: str) -> None:
    headers: list[tuple[bytes, bytes]] = []
    for key, value in ctx.headers:
        if key == b"cookie":
            kept = [item for item in value.split(b";") if item.strip().partition(b"=")[0].strip()
                    != name.encode("latin-1")]
            if not any(item.strip() for item in kept):
                continue
            value = b";".join(kept).strip()
        headers.append((key, value))
    ctx.headers[:] = headers


def remove_location(ctx: RequestContext, location: Location) -> None:
    kind, name = location
    if kind == "header":
        assert isinstance(name, bytes)
        rewrite_headers(ctx, (name + b": ",), [])
    elif kind == "query":
        assert isinstance(name, str)
        if ctx.query:
            ctx.query = remove_query_param(ctx.query, name)
    else:
        assert isinstance(name, str)
        remove_cookie(ctx, name)


def bearer_values(ctx: RequestContext, header: bytes) -> list[str]:
    """Tokens sent as `<header>: Bearer <token>`; other schemes (Basic, ...) are not ours to judge."""
    out = []
    for value in header_values(ctx, header):
        scheme, _, rest = value.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            out.append(rest.strip().decode("latin-1"))
    return out


def single_credential(found: list[str]) -> str | None:
    """The one credential sent, None when none; two different ones in one request are refused."""
    if not found:
        return None
    first = found[0]
    if any(other != first for other in found[1:]):
        raise invalid("multiple_credentials")
    if not first:
        raise invalid("empty_credential")
    return first


# --- claims to headers ----------------------------------------------------------------------------------


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name; a dotted name that is not itself a claim walks into objects (`realm.roles`)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def header_value(value: Any) -> bytes:
    """A claim as an upstream header value: strings as they are (UTF-8), numbers and booleans as JSON, lists
    of scalars comma-joined, objects as compact JSON. Control characters are refused (no header injection,
    even from a trusted issuer)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value):
        text = ",".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise invalid("bad_claim_value")
    return text.encode("utf-8")
