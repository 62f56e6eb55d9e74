"""cache: answer repeated GETs from a response cache at the edge, obeying HTTP caching (RFC 9111).

    cache: {ttl: 30s, vary: [Accept-Language], shared: true}

- What is stored: answers to GET (HEAD is served from them) with a status cacheable by default (200, 203,
  204, 300, 301, 308, 404, 405, 410, 414, 501), up to `body_limit`, unless the response says `no-store`,
  `private` or `no-cache`, sets a cookie, or varies on more than the `vary` list (`Vary: *` included).
- For how long: `s-maxage`, else `max-age`, else `Expires` minus `Date`; `ttl` when the response says none.
- Keys: method family, host, path, query, and the values of the `vary` request headers.
- Requests: `Cache-Control: no-store` bypasses the cache; `no-cache` or `max-age=0` fetches anew (and stores
  the answer). A request that carried credentials (an `Authorization` header, or a consumer an auth plugin
  named) is never answered from, nor stored in, the cache unless `authorized: true`: then one answer serves
  every authorized caller. The plugin runs after auth, so a cached answer never skips an auth check.
- A hit carries `Age` and `X-Cache-Status: HIT`; a request with `If-None-Match` naming the stored `ETag` gets
  304. Misses say `MISS`, requests the cache may not serve `BYPASS`. The access log's `cache` field says the
  same (lowercase).
- A successful POST, PUT, PATCH or DELETE to a URL drops every stored answer for it (RFC 9111 §4.4).
- `shared: true` keeps the cache in `store.redis` (when configured), one cache for every replica; otherwise
  each worker keeps its own, bounded by `max_entries`.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from pydantic import Field

from frontgate.config.schema import Duration, Route, Size
from frontgate.pipeline.context import Reply, RequestContext, ResponseHead
from frontgate.plugins.base import BuildContext, Plugin, PluginConfig
from frontgate.store import shared_store

log = logging.getLogger("frontgate.cache")

CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NOT_STORED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"age",
                         b"set-cookie", b"x-cache-status", b"proxy-authenticate", b"te", b"trailer", b"upgrade"})
_STATE = "cache"  # ctx.state: "hit", "miss" or "bypass" (the access log's `cache` field)
_KEY = "cache_key"  # ctx.state: (URL key, variant key) of a miss to store
_URL = "cache_url"  # ctx.state: the URL key an unsafe request drops when it succeeds


class CacheConfig(PluginConfig):
    ttl: Duration = Field(60.0, gt=0, description="Freshness when the response gives none.")
    vary: list[str] = Field(default_factory=list, description="Request headers whose values key the cache.")
    shared: bool = Field(False, description="Keep the cache in store.redis: one cache for every replica.")
    authorized: bool = Field(False, description="Cache answers to requests that carried credentials too.")
    body_limit: Size = Field(1024 * 1024, gt=0, description="Largest body stored (larger ones pass uncached).")
    max_entries: int = Field(10_000, ge=1, description="URLs kept per worker (in-process cache).")


def _directives(value: bytes | None) -> dict[str, str]:
    """Cache-Control as {directive: argument} (lowercase names, quotes removed)."""
    out: dict[str, str] = {}
    for part in (value or b"").decode("latin-1").split(","):
        name, _, argument = part.strip().partition("=")
        if name:
            out[name.lower()] = argument.strip().strip('"')
    return out


def _seconds(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def freshness(fields: dict[bytes, bytes], default: float) -> float:
    """How long a response may be served from the cache (RFC 9111 §4.2.1); 0: not at all."""
    control = _directives(fields.get(b"cache-control"))
    for name in ("s-maxage", "max-age"):
        if name in control:
            return float(_seconds(control[name]) or 0)
    expires = fields.get(b"expires")
    if expires is not None:
        try:
            then = email.utils.parsedate_to_datetime(expires.decode("latin-1")).timestamp()
            date = fields.get(b"date")
            now = email.utils.parsedate_to_datetime(date.decode("latin-1")).timestamp() if date else time.time()
        except (TypeError, ValueError):
            return 0.0  # an invalid Expires means "already expired" (RFC 9111 §5.3)
        return max(0.0, then - now)
    return default


class _Entry:
    __slots__ = ("body", "expires", "headers", "status", "stored")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, stored: float,
                 expires: float) -> None:
        self.status, self.headers, self.body, self.stored, self.expires = status, headers, body, stored, expires

    def encode(self) -> bytes:
        head = {"s": self.status, "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
                "t": self.stored, "e": self.expires}
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> _Entry:
        head_text, _, body = data.partition(b"\n")
        head = json.loads(head_text)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head["h"]]
        return cls(head["s"], headers, body, head["t"], head["e"])


class _MemoryBackend:
    """This worker's cache: URL -> {variant -> entry}, the least recently used URL dropped first."""

    def __init__(self, max_entries: int) -> None:
        self._urls: OrderedDict[bytes, dict[bytes, _Entry]] = OrderedDict()
        self._max = max_entries

    def get(self, primary: bytes, variant: bytes) -> _Entry | None:
        variants = self._urls.get(primary)
        if variants is None:
            return None
        self._urls.move_to_end(primary)
        return variants.get(variant)

    def put(self, primary: bytes, variant: bytes, entry: _Entry) -> None:
        self._urls.setdefault(primary, {})[variant] = entry
        self._urls.move_to_end(primary)
        while len(self._urls) > self._max:
            self._urls.popitem(last=False)

    def drop(self, primary: bytes) -> None:
        self._urls.pop(primary, None)


class _StoreBackend:
    """The cache in store.redis: a hash per URL (field: variant), expiring with its freshest entry."""

    def __init__(self, build: BuildContext) -> None:
        self._store: Any = shared_store(build)  # a RedisStore or ClusterStore (store.redis is set)

    async def start(self) -> None:
        await self._store.start()

    async def close(self) -> None:
        await self._store.close()

    async def get(self, primary: bytes, variant: bytes) -> _Entry | None:
        data = await self._store.hget(primary, variant)
        return _Entry.decode(data) if data is not None else None

    def put(self, primary: bytes, variant: bytes, entry: _Entry) -> None:
        self._store.hset_nowait(primary, variant, entry.encode(), int((entry.expires - time.time()) * 1000) + 1)

    def drop(self, primary: bytes) -> None:
        self._store.delete_nowait(primary)


class CachePlugin(Plugin):
    name = "cache"
    priority = 400  # after auth, limits and body checks: a cached answer never skips them
    Config = CacheConfig
    config: CacheConfig

    def __init__(self, config: CacheConfig, route: Route | None, build: BuildContext) -> None:
        super().__init__(config, route, build)
        self.body_limit = config.body_limit
        self.hold_whole_response = False  # an answer too large to store still streams
        self._vary = [name.lower().encode("latin-1") for name in config.vary]
        self._vary_names = frozenset(self._vary)
        store = build.gateway.store
        use_store = config.shared and store is not None and store.redis is not None
        self._memory = None if use_store else _MemoryBackend(config.max_entries)
        self._store = _StoreBackend(build) if use_store else None
        self._route_name = (route.name if route is not None else "-").encode()

    async def startup(self) -> None:
        if self._store is not None:
            await self._store.start()

    async def shutdown(self) -> None:
        if self._store is not None:
            await self._store.close()

    def _primary(self, ctx: RequestContext) -> bytes:
        """The key of the URL (every variant of it)."""
        url = b"%s\n%s\n%s?%s" % (self._route_name, ctx.host.encode("latin-1"), ctx.path.encode("latin-1"),
                                  ctx.query)
        return b"fg:cache:" + hashlib.sha256(url).hexdigest().encode()

    def _keys(self, ctx: RequestContext) -> tuple[bytes, bytes]:
        """The URL's key and the variant's, by the values of the `vary` headers."""
        if not self._vary:
            return self._primary(ctx), b"-"
        variant = b"\n".join(ctx.header(name) or b"" for name in self._vary)
        return self._primary(ctx), hashlib.sha256(variant).hexdigest().encode()

    def on_request(self, ctx: RequestContext) -> Reply | Awaitable[Reply | None] | None:
        method = ctx.method
        state = ctx.state if ctx.state is not None else {}
        ctx.state = state
        if method in _UNSAFE:
            state[_URL] = self._primary(ctx)  # dropped if the change succeeds (on_response)
            return None
        control = _directives(ctx.header(b"cache-control"))
        credentials = ctx.consumer is not None or ctx.header(b"authorization") is not None
        if method not in ("GET", "HEAD") or "no-store" in control or (credentials and not self.config.authorized):
            state[_STATE] = "bypass"
            return None
        keys = self._keys(ctx)
        state[_KEY] = keys
        if "no-cache" in control or control.get("max-age") == "0":
            self._miss(ctx, state)
            return None
        if self._memory is not None:
            return self._answer(ctx, state, self._memory.get(*keys))
        assert self._store is not None
        return self._lookup(ctx, state, keys)

    async def _lookup(self, ctx: RequestContext, state: dict[str, Any], keys: tuple[bytes, bytes]) -> Reply | None:
        assert self._store is not None
        try:
            entry = await self._store.get(*keys)
        except Exception as error:  # any store failure (down, slow, a bad entry): a cache that misses
            log.debug("cache lookup failed: %s", error)
            entry = None
        return self._answer(ctx, state, entry)

    def _answer(self, ctx: RequestContext, state: dict[str, Any], entry: _Entry | None) -> Reply | None:
        now = time.time()
        if entry is None or entry.expires <= now:
            self._miss(ctx, state)
            return None
        state[_STATE] = "hit"
        del state[_KEY]
        headers = [*entry.headers, (b"age", b"%d" % max(0, int(now - entry.stored))), (b"x-cache-status", b"HIT")]
        etag = next((v for k, v in entry.headers if k == b"etag"), None)
        asked = ctx.header(b"if-none-match")
        if etag is not None and asked is not None and entry.status == 200 and (
                asked.strip() == b"*" or etag in [tag.strip() for tag in asked.split(b",")]):
            return Reply(304, b"", [h for h in headers if h[0] not in (b"content-type",)], content_type=None)
        return Reply(entry.status, entry.body, headers, content_type=None)

    def _miss(self, ctx: RequestContext, state: dict[str, Any]) -> None:
        state[_STATE] = "miss"
        ctx.hold_response = True  # the answer is wanted whole, to store it (up to body_limit)

    def on_response(self, ctx: RequestContext, head: ResponseHead) -> None:
        state = ctx.state
        outcome = state.get(_STATE) if state is not None else None
        if outcome is None:
            if state is not None and _URL in state and head.status < 400:
                self._drop(state.pop(_URL))
            return
        if outcome != "hit":
            head.set(b"x-cache-status", outcome.upper().encode())

    def on_response_body(self, ctx: RequestContext, head: ResponseHead, body: bytes) -> bytes:
        state = ctx.state
        keys = state.pop(_KEY, None) if state is not None and state.get(_STATE) == "miss" else None
        if keys is None or head.status not in CACHEABLE_STATUSES or ctx.method != "GET":
            return body
        fields = dict(head.headers)
        control = _directives(fields.get(b"cache-control"))
        vary = {name.strip().lower() for name in fields.get(b"vary", b"").split(b",") if name.strip()}
        if {"no-store", "private", "no-cache"} & control.keys() or b"set-cookie" in fields \
                or not vary <= self._vary_names:
            return body
        ttl = freshness(fields, self.config.ttl)
        if ttl <= 0:
            return body
        now = time.time()
        headers = [(k, v) for k, v in head.headers if k not in _NOT_STORED]
        entry = _Entry(head.status, headers, body, now, now + ttl)
        primary, variant = keys
        if self._memory is not None:
            self._memory.put(primary, variant, entry)
        elif self._store is not None:
            self._store.put(primary, variant, entry)
        return body

    def _drop(self, primary: bytes) -> None:
        if self._memory is not None:
            self._memory.drop(primary)
        elif self._store is not None:
            self._store.drop(primary)
