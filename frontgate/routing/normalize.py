"""Request-target parsing and path normalisation (SPEC §3 Routing).

Routes are matched against, and requests forwarded with, the normalised path, so that no route can be
reached by spelling its path differently (`/admin`, `/x/../admin`, `/%61dmin`, `/x/%2e%2e/admin`).

The normal form (RFC 3986 §6.2.2):

- percent-encodings of unreserved characters (ALPHA DIGIT - . _ ~) are decoded, the rest get uppercase hex;
- characters that may not appear raw in a path but are harmless (`"<>[]^`{|}`) are percent-encoded;
- dot segments are removed (RFC 3986 §5.2.4), after `%2E` was decoded, and never above the root;
- `%2F` stays encoded (it is data, not a separator) and `//` is kept: both mean something to some upstreams.

Refused with 400: a path not starting with `/`, malformed `%` escapes, NUL and other control characters
(raw or encoded), non-ASCII bytes, space, `#`, and backslash (raw) because some servers read it as `/`.
"""

from __future__ import annotations

import re

from frontgate.errors import BadRequest

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_SUB_DELIMS = b"!$&'()*+,;="
# Everything a normalised path may hold raw; `%` is handled separately.
_PATH_SAFE = _UNRESERVED + _SUB_DELIMS + b":@/"
# Printable ASCII not allowed raw in a path but unambiguous: browsers and curl send some of these raw.
_ENCODE_RAW = b'"<>[]^`{|}'
_ENCODE_RAW_RE = re.compile(b"[" + re.escape(_ENCODE_RAW) + b"]")
_PERCENT = ord("%")


def _escape_table() -> dict[bytes, str | None]:
    """Every two-hex-digit spelling (any case) -> its normal form, or None for a refused control byte."""
    table: dict[bytes, str | None] = {}
    hexdigits = "0123456789abcdefABCDEF"
    for hi in hexdigits:
        for lo in hexdigits:
            code = int(hi + lo, 16)
            normal: str | None
            if code < 0x20 or code == 0x7F:
                normal = None
            elif code < 0x80 and code in _UNRESERVED:
                normal = chr(code)
            else:
                normal = f"%{code:02X}"
            table[(hi + lo).encode()] = normal
    return table


_ESCAPES = _escape_table()


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split an origin-form request target into (path, query); the query has no leading `?`."""
    path, _, query = target.partition(b"?")
    return path, query


def normalize_path(raw_path: bytes) -> str:
    """The normal form of the path of a request target (without the query); BadRequest when it is unsafe."""
    # Fast path, taken by most requests: only characters that are safe raw (so no `%`), no dot segment.
    if not raw_path.translate(None, _PATH_SAFE) and raw_path.find(b"/.") < 0 and raw_path[:1] == b"/":
        return raw_path.decode("ascii")
    return _normalize_slow(raw_path)


def _normalize_slow(raw_path: bytes) -> str:
    if raw_path[:1] != b"/":
        raise BadRequest("The request path must start with /.")
    unsafe = raw_path.translate(None, _PATH_SAFE + b"%")
    if unsafe:
        if unsafe.translate(None, _ENCODE_RAW):
            raise BadRequest("The request path holds a character that is not allowed.")
        raw_path = _ENCODE_RAW_RE.sub(lambda m: b"%%%02X" % m.group()[0], raw_path)
    text = _normalize_escapes(raw_path) if _PERCENT in raw_path else raw_path.decode("ascii")
    if "/." not in text:
        return text
    return remove_dot_segments(text)


def _normalize_escapes(raw_path: bytes) -> str:
    head, *rest = raw_path.split(b"%")
    out = [head.decode("ascii")]
    for part in rest:
        normal = _ESCAPES.get(part[:2], "")
        if normal is None:
            raise BadRequest("The request path holds an encoded control character.")
        if not normal:
            raise BadRequest("The request path holds a malformed percent-encoding.")
        out.append(normal)
        out.append(part[2:].decode("ascii"))
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: resolve `.` and `..`; `..` at the root stays at the root."""
    segments = path.split("/")
    last = len(segments) - 1
    out: list[str] = []
    for i in range(1, len(segments)):
        segment = segments[i]
        if segment == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")  # `/a/b/..` is the directory `/a/`
        elif segment == ".":
            if i == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


_AUTHORITY = re.compile(rb"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")


def parse_absolute_form(target: bytes) -> tuple[bytes, bytes, bytes]:
    """Split an absolute-form target `http://host:port/path?q` into (authority, path, query).

    RFC 9112 §3.2.2: with an absolute-form target the authority replaces the Host header. The authority is
    returned as sent (pass it through `host_for_routing` to route); an empty path becomes `/`. Userinfo
    (`user@host`) is refused: it has no place in a request and is a favourite of spoofing tricks.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise BadRequest("The request target must be a path or an http(s) URL.")
    end = len(rest)
    for stop in (b"/", b"?"):
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    authority, path_and_query = rest[:end], rest[end:]
    if not _AUTHORITY.fullmatch(authority):
        raise BadRequest("The request target has an invalid host.")
    path, query = split_target(path_and_query)
    return authority, path or b"/", query


def host_for_routing(authority: bytes) -> str:
    """A Host header (or absolute-form authority) as the router wants it: lowercase, no port, no final dot."""
    # An IPv6 literal holds colons: its port follows the closing bracket.
    host = authority[: authority.find(b"]") + 1] if authority[:1] == b"[" else authority.partition(b":")[0]
    if not host.isascii():
        raise BadRequest("The Host header is invalid.")
    return host.decode("ascii").lower().rstrip(".")
