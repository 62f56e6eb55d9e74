"""The compiled router: (method, host, path, headers) -> the payload of the most specific route.

Precedence, from the strongest rule to the weakest (SPEC §3 Routing):

1. Host: a route naming the exact host beats a `*.` wildcard, which beats a route with no host condition.
   Among wildcards the longest suffix wins. `*.example.com` matches `a.example.com` and `a.b.example.com`,
   never `example.com` itself.
2. Path kind: an exact path beats a regex, which beats a prefix.
3. Within a kind: among regexes the first declared wins; among prefixes the longest.
4. A route with header conditions beats one without.
5. Declaration order.

Each (host, path pattern) pair of a route is one *candidate*; candidates are tried in the order above and
the first one whose headers and method fit wins. Prefixes match on segment boundaries: `/orders` matches
`/orders`, `/orders/` and `/orders/7`, never `/ordersx`; `/orders/` matches only below `/orders/`; `/`
matches everything. Regexes must match the whole path. Header conditions need every listed header present,
and every occurrence of it equal (case-sensitively) to one of the wanted values, so a request cannot pass a
second, different value along to the upstream. Empty `methods` means any method; HEAD goes wherever GET
does.

Exact and prefix paths from the config are normalised like request paths (`/%7Euser` is `/~user`);
regexes are matched against the normalised path as they are.

No candidate fits host, path and headers: 404. Some do but none takes the method: 405, with an `Allow`
header listing every method those candidates take.

Speed: everything is grouped at build time. A request costs a dict lookup for its exact host, one
`endswith` to rule out every wildcard (a dict lookup per parent domain otherwise), and per host bucket a
dict lookup for exact paths, then one lane for the path's first segment: the regexes whose literal head
names that segment (plus those without one) and the prefixes below it (plus `/`). A 50-route table matches
in about 1-3 µs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import quote

from frontgate.config.schema import Match
from frontgate.errors import BadRequest, MethodNotAllowed, NotFound
from frontgate.routing.normalize import normalize_path

T = TypeVar("T")

Headers = Sequence[tuple[bytes, bytes]]
HeaderCondition = tuple[bytes, frozenset[bytes]]

EXACT, REGEX, PREFIX = "exact", "regex", "prefix"
_KIND_RANK = {EXACT: 0, REGEX: 1, PREFIX: 2}
_HOST_EXACT, _HOST_WILDCARD, _HOST_ANY = 0, 1, 2

# (host rank, -wildcard length, host, path kind, within kind (2), header rank, route index, pattern index)
_Key = tuple[int, int, str, int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class RouteRow:
    """One line of the route table, in precedence order: a route appears once per (host, path pattern)."""

    route: str
    host: str  # "*" when any host
    kind: str  # exact | regex | prefix
    pattern: str
    methods: str  # "*" when any method
    headers: str  # "x-tenant=acme|beta, ..." or ""


class _Route(Generic[T]):
    """What a route's candidates share: name, payload, method and header conditions."""

    __slots__ = ("header_conditions", "index", "match", "methods", "name", "payload")

    def __init__(self, index: int, name: str, match: Match, payload: T) -> None:
        self.index = index
        self.name = name
        self.match = match
        self.payload = payload
        methods = set(match.methods)
        if "GET" in methods:
            methods.add("HEAD")
        self.methods: frozenset[str] | None = frozenset(methods) if methods else None
        self.header_conditions: tuple[HeaderCondition, ...] = tuple(
            (name.encode("ascii"), frozenset(v.encode() for v in ([want] if isinstance(want, str) else want)))
            for name, want in sorted(match.headers.items())
        )


class _Candidate(Generic[T]):
    """One (host, path pattern) pair of a route: the unit of precedence."""

    __slots__ = (
        "exact_path",
        "header_conditions",
        "host",
        "key",
        "kind",
        "methods",
        "pattern",
        "payload",
        "prefix_slash",
        "regex",
        "route",
    )

    def __init__(self, route: _Route[T], host: str | None, kind: str, pattern: str, pattern_index: int) -> None:
        self.route = route
        self.payload = route.payload  # copied flat: one attribute lookup less on the hot path
        self.methods = route.methods
        self.header_conditions = route.header_conditions
        self.host = host
        self.kind = kind
        self.pattern = pattern
        self.regex = re.compile(pattern) if kind == REGEX else None
        # Prefix `/a` matches `/a` and `/a/...`; prefix `/a/` only `/a/...`.
        self.exact_path = pattern if kind == EXACT or (kind == PREFIX and not pattern.endswith("/")) else None
        self.prefix_slash = (pattern if pattern.endswith("/") else pattern + "/") if kind == PREFIX else None
        self.key = self._precedence(pattern_index)

    def _precedence(self, pattern_index: int) -> _Key:
        host = self.host
        if host is None:
            host_rank, host_length, host = _HOST_ANY, 0, ""
        elif host.startswith("*."):
            host_rank, host_length = _HOST_WILDCARD, -len(host)
        else:
            host_rank, host_length = _HOST_EXACT, 0
        route_index = self.route.index
        if self.kind == REGEX:
            within = (route_index, pattern_index)  # the first declared regex wins
        elif self.kind == PREFIX:
            within = (-len(self.pattern), 0)  # the longest prefix wins
        else:
            within = (0, 0)
        header_rank = 0 if self.header_conditions else 1
        kind_rank = _KIND_RANK[self.kind]
        return (host_rank, host_length, host, kind_rank, *within, header_rank, route_index, pattern_index)

    def host_matches(self, host: str) -> bool:
        if self.host is None:
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    def path_matches(self, path: str) -> bool:
        if self.regex is not None:
            return self.regex.fullmatch(path) is not None
        if self.prefix_slash is not None:
            return path == self.exact_path or path.startswith(self.prefix_slash)
        return path == self.exact_path

    def describe(self) -> str:
        what = f"exact path {self.pattern}" if self.kind == EXACT else f"{self.kind} {self.pattern}"
        return what if self.host is None else f"host {self.host}, {what}"


def _headers_fit(conditions: tuple[HeaderCondition, ...], headers: Headers) -> bool:
    for name, wanted in conditions:
        seen = False
        for have_name, value in headers:
            if have_name == name:
                if value not in wanted:
                    return False
                seen = True
        if not seen:
            return False
    return True


_RegexLane = tuple[tuple[Callable[[str], object], _Candidate[T]], ...]
_PrefixLane = tuple[tuple[str | None, str, _Candidate[T]], ...]


class _Table(Generic[T]):
    """The candidates of one host bucket, grouped for quick lookup, each group in precedence order.

    Exact paths sit in a dict. Regexes and prefixes sit in lanes keyed by the first path segment they can
    match, so a request only tries those sharing its first segment, plus the ones that could match any
    (regexes whose first segment is not a plain literal; the `/` prefix).
    """

    __slots__ = ("exact", "lanes", "other")

    def __init__(self, candidates: Sequence[_Candidate[T]]) -> None:
        exact: dict[str, list[_Candidate[T]]] = {}
        by_segment: dict[str, list[_Candidate[T]]] = {}
        anywhere: list[_Candidate[T]] = []
        for c in candidates:
            if c.kind == EXACT:
                exact.setdefault(c.pattern, []).append(c)
                continue
            segment = _pattern_first_segment(c)
            if segment is None:
                anywhere.append(c)
            else:
                by_segment.setdefault(segment, []).append(c)
        self.exact = {path: tuple(group) for path, group in exact.items()}
        self.lanes = {
            segment: self._lane(sorted(group + anywhere, key=lambda c: c.key)) for segment, group in by_segment.items()
        }
        self.other = self._lane(anywhere)

    @staticmethod
    def _lane(candidates: Sequence[_Candidate[T]]) -> tuple[_RegexLane[T], _PrefixLane[T]]:
        regexes = tuple((c.regex.fullmatch, c) for c in candidates if c.regex is not None)
        prefixes = tuple((c.exact_path, c.prefix_slash, c) for c in candidates if c.prefix_slash is not None)
        return regexes, prefixes

    def find(self, method: str, path: str, headers: Headers, allow: list[frozenset[str]]) -> _Candidate[T] | None:
        # The header and method checks are inlined in each loop: a call per candidate costs more than they do.
        group = self.exact.get(path)
        if group is not None:
            for c in group:
                if c.header_conditions and not _headers_fit(c.header_conditions, headers):
                    continue
                if c.methods is None or method in c.methods:
                    return c
                allow.append(c.methods)
        regexes, prefixes = self.lanes.get(path.split("/", 2)[1], self.other)
        for fullmatch, c in regexes:
            if fullmatch(path) is not None:
                if c.header_conditions and not _headers_fit(c.header_conditions, headers):
                    continue
                if c.methods is None or method in c.methods:
                    return c
                allow.append(c.methods)
        for exact_path, prefix_slash, c in prefixes:
            if path == exact_path or path.startswith(prefix_slash):
                if c.header_conditions and not _headers_fit(c.header_conditions, headers):
                    continue
                if c.methods is None or method in c.methods:
                    return c
                allow.append(c.methods)
        return None


# A regex that starts with a literal first segment, ended by `/` (not made optional) or the pattern's end.
_LITERAL_HEAD = re.compile(r"\^?/([A-Za-z0-9_~!,;=:@'&-]*)(?:/(?![*?{])|\$?$)")


def _pattern_first_segment(c: _Candidate[T]) -> str | None:
    """The only first path segment the pattern can match, or None when it can match several."""
    if c.kind == PREFIX:
        return None if c.pattern == "/" else c.pattern.split("/", 2)[1]
    if "|" in c.pattern:  # an alternation may bypass the literal head
        return None
    head = _LITERAL_HEAD.match(c.pattern)
    return head.group(1) if head else None


def _normal_pattern(pattern: str) -> str:
    """A configured path in the form requests are matched in, so `/caf%c3%a9` and `/café` both work."""
    try:
        return normalize_path(quote(pattern, safe="/%:@!$&'()*+,;=~").encode("ascii"))
    except BadRequest as exc:
        raise ValueError(f"route path {pattern!r} cannot match any request: {exc.message}") from exc


def _candidates(route: _Route[T]) -> list[_Candidate[T]]:
    match = route.match
    patterns = [
        *((EXACT, _normal_pattern(p)) for p in match.exact),
        *((REGEX, p) for p in match.regex),
        *((PREFIX, _normal_pattern(p)) for p in match.paths),
    ]
    hosts: list[str | None] = list(dict.fromkeys(match.hosts)) or [None]
    return [_Candidate(route, host, kind, pattern, i) for host in hosts for i, (kind, pattern) in enumerate(patterns)]


def allow_header(methods: Sequence[frozenset[str]]) -> bytes:
    """The `Allow` value for some method sets: sorted, deduplicated (HEAD is already in where GET is)."""
    union: set[str] = set()
    for allowed in methods:
        union |= allowed
    return ", ".join(sorted(union)).encode("ascii")


class Router(Generic[T]):
    """Routes (name, match, payload) compiled for fast lookup; see the module docstring for precedence."""

    def __init__(self, entries: Sequence[tuple[str, Match, T]]) -> None:
        routes = [_Route(i, name, match, payload) for i, (name, match, payload) in enumerate(entries)]
        self._by_route = [sorted(_candidates(r), key=lambda c: c.key) for r in routes]
        self._ordered = sorted((c for cs in self._by_route for c in cs), key=lambda c: c.key)
        by_host: dict[str, list[_Candidate[T]]] = {}
        any_host: list[_Candidate[T]] = []
        for c in self._ordered:
            if c.host is None:
                any_host.append(c)
            else:
                by_host.setdefault(c.host, []).append(c)
        self._any_host = _Table(any_host)
        self._exact_hosts = {host: _Table(group) for host, group in by_host.items() if not host.startswith("*.")}
        # ".example.com" -> its table, so a request tries each parent domain of its host with one dict lookup.
        self._wildcards = {host[1:]: _Table(group) for host, group in by_host.items() if host.startswith("*.")}
        self._wildcard_suffixes = tuple(self._wildcards)  # one `endswith` rules them all out for most hosts

    def match(self, method: str, host: str, path: str, headers: Headers) -> T:
        """The winning route's payload. `host`: lowercase, no port; `path`: normalised; names lowercase.

        Raises NotFound, or MethodNotAllowed with an `Allow` header.
        """
        allow: list[frozenset[str]] = []
        if self._exact_hosts:
            table = self._exact_hosts.get(host)
            if table is not None:
                hit = table.find(method, path, headers, allow)
                if hit is not None:
                    return hit.payload
        if self._wildcard_suffixes and host.endswith(self._wildcard_suffixes):
            hit = self._match_wildcards(method, host, path, headers, allow)
            if hit is not None:
                return hit.payload
        hit = self._any_host.find(method, path, headers, allow)
        if hit is not None:
            return hit.payload
        if allow:
            value = allow_header(allow)
            raise MethodNotAllowed(
                f"{method} is not allowed here; allowed: {value.decode('ascii')}.",
                headers=[(b"allow", value)],
            )
        raise NotFound()

    def _match_wildcards(
        self, method: str, host: str, path: str, headers: Headers, allow: list[frozenset[str]]
    ) -> _Candidate[T] | None:
        # Try each parent domain of the host, longest first: `a.b.c` -> `.b.c`, `.c`.
        dot = host.find(".")
        while dot > 0:
            table = self._wildcards.get(host[dot:])
            if table is not None:
                hit = table.find(method, path, headers, allow)
                if hit is not None:
                    return hit
            dot = host.find(".", dot + 1)
        return None

    def __repr__(self) -> str:
        return (
            f"Router({len(self._by_route)} routes, {len(self._ordered)} candidates, "
            f"{len(self._exact_hosts)} hosts, {len(self._wildcards)} wildcards)"
        )

    def table(self) -> list[RouteRow]:
        """Every (route, host, path pattern) in precedence order, for `frontgate routes`."""
        return [_row(c) for c in self._ordered]

    def explain(self, method: str, host: str, path: str, headers: Headers) -> list[tuple[str, str]]:
        """(route name, why it matches or not) for every route, in the order the router tries them.

        The winner reads "MATCH: ...". A route that also matches but comes later says so.
        """
        verdicts = sorted(
            (_verdict(cs, method, host, path, headers) for cs in self._by_route if cs),
            key=lambda v: v[0],
        )
        out: list[tuple[str, str]] = []
        winner: str | None = None
        for _key, name, reason, matched in verdicts:
            if matched and winner is None:
                winner = name
                reason = f"MATCH: {reason}"
            elif matched:
                reason = f"matches too ({reason}), but {winner} comes first"
            out.append((name, reason))
        return out


def _verdict(
    candidates: Sequence[_Candidate[T]], method: str, host: str, path: str, headers: Headers
) -> tuple[_Key, str, str, bool]:
    """(sort key, route name, reason, matched) for one route's candidates, sorted by precedence."""
    route = candidates[0].route
    on_host = [c for c in candidates if c.host_matches(host)]
    if not on_host:
        return candidates[0].key, route.name, "host does not match", False
    on_path = [c for c in on_host if c.path_matches(path)]
    if not on_path:
        return on_host[0].key, route.name, "path does not match", False
    best = on_path[0]  # headers and methods are the route's: if the best candidate fails them, all do
    header_problem = _header_problem(route.header_conditions, headers)
    if header_problem:
        return best.key, route.name, header_problem, False
    if route.methods is not None and method not in route.methods:
        return best.key, route.name, f"method {method} not in {', '.join(route.match.methods)}", False
    return best.key, route.name, best.describe(), True


def _header_problem(conditions: tuple[HeaderCondition, ...], headers: Headers) -> str:
    for name, wanted in conditions:
        values = [value for have, value in headers if have == name]
        if values and all(v in wanted for v in values):
            continue
        want = ", ".join(f"'{w.decode(errors='replace')}'" for w in sorted(wanted))
        want = f"one of {want}" if len(wanted) > 1 else want
        have = ", ".join(f"'{v.decode(errors='replace')}'" for v in values) if values else "missing"
        return f"header {name.decode('ascii')} is {have}, wants {want}"
    return ""


def _row(c: _Candidate[T]) -> RouteRow:
    match = c.route.match
    headers = ", ".join(
        f"{name}={'|'.join([want] if isinstance(want, str) else want)}" for name, want in sorted(match.headers.items())
    )
    return RouteRow(
        route=c.route.name,
        host=c.host or "*",
        kind=c.kind,
        pattern=c.pattern,
        methods=", ".join(match.methods) or "*",
        headers=headers,
    )
