"""Where a JWT verifier gets its keys: inline keys and JWKS files (fixed per config generation), and JWKS URLs
fetched in the background.

A `JwksSource` fetches once at startup, then every `refresh` seconds; a token with a kid it does not know
triggers one extra fetch, at most once per `cooldown` (so garbage kids cannot make us hammer the issuer).
When the issuer is down the last good key set keeps serving, across reloads too (the last good set per URL
is kept for the process). Only the configured URL is ever fetched: nothing in a token (`jku`, `x5u`, `jwk`,
`kid`) can name where keys come from. One source serves every route that names the same URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives import serialization

from frontgate.auth.jose import JoseError, KeySet, VerifyKey, json_object, usable_jwks

log = logging.getLogger("frontgate.auth")

MAX_JWKS_BYTES = 1024 * 1024  # real JWKS documents are a few KiB; this only bounds a broken or hostile one

Fetch = Callable[[str, float], Awaitable[dict[str, Any]]]

# The last good key set per URL, for this process: a reload while the issuer is down keeps working.
_LAST_GOOD: dict[str, KeySet] = {}


class KeySource(Protocol):
    version: int  # changes whenever the key set changes, so verified-token caches can notice

    def current(self) -> KeySet | None: ...

    async def ready(self) -> KeySet | None:
        """The key set, waiting (bounded) for a first fetch if there is none yet."""
        ...

    async def refresh_for_unknown_kid(self) -> bool:
        """Try to learn new keys; False at once when a fetch happened too recently."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class StaticKeys:
    """Inline keys and JWKS files: read once per config generation."""

    version = 0

    def __init__(self, keys: list[VerifyKey]) -> None:
        self._keys = KeySet(keys)

    def current(self) -> KeySet:
        return self._keys

    async def ready(self) -> KeySet:
        return self._keys

    async def refresh_for_unknown_kid(self) -> bool:
        return False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def http_fetch(url: str, timeout: float) -> dict[str, Any]:
    """GET a JWKS document; no redirects, bounded size."""
    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
        client.stream("GET", url, headers={"accept": "application/json"}) as response,
    ):
        if response.status_code != 200:
            raise JoseError(f"the JWKS URL answered HTTP {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise JoseError("the JWKS document is larger than 1 MiB")
    return json_object(bytes(body))


def _fingerprint(keys: KeySet) -> tuple[tuple[Any, ...], ...]:
    out = []
    for key in keys.keys:
        material = key.key
        raw = material if isinstance(material, bytes) else material.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        out.append((key.kid, key.family, tuple(sorted(key.algorithms)), raw))
    return tuple(out)


class JwksSource:
    """A JWKS URL, fetched in the background and on unknown kids; stale keys are served while it is down."""

    def __init__(
        self,
        url: str,
        refresh: float,
        cooldown: float,
        timeout: float,
        *,
        fetch: Fetch = http_fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.refresh_interval = refresh
        self.cooldown = cooldown
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._keys: KeySet | None = _LAST_GOOD.get(url)
        self.version = 0
        self.fetches = 0  # attempts, for tests and status pages
        self.failures = 0
        self._last_attempt = -math.inf
        self._last_success = -math.inf
        self._inflight: asyncio.Task[bool] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._users = 0

    def __repr__(self) -> str:
        count = len(self._keys) if self._keys is not None else 0
        return f"<JwksSource {self.url} keys={count} fetches={self.fetches} failures={self.failures}>"

    def current(self) -> KeySet | None:
        return self._keys

    async def ready(self) -> KeySet | None:
        if self._keys is None and (self._inflight is not None or self._may_fetch()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.refresh(), self.timeout)
        return self._keys

    async def refresh_for_unknown_kid(self) -> bool:
        if self._inflight is None and not self._may_fetch():
            return False
        try:
            return await asyncio.wait_for(self.refresh(), self.timeout)
        except TimeoutError:
            return False

    def _may_fetch(self) -> bool:
        return self._clock() - self._last_attempt >= self.cooldown

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch already under way); True when the key set changed."""
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._fetch_once())
        task = self._inflight
        return await asyncio.shield(task)

    async def _fetch_once(self) -> bool:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            document = await asyncio.wait_for(self._fetch(self.url, self.timeout), self.timeout)
            keys, skipped = usable_jwks(document, allow_secret=False)
            for note in skipped:
                log.warning("JWKS %s: skipped %s", self.url, note)
            if not keys:
                raise JoseError("the JWKS has no usable signature key")
        except (JoseError, httpx.HTTPError, OSError, TimeoutError) as exc:
            self.failures += 1
            stale = "serving the last good keys" if self._keys is not None else "no keys yet"
            log.warning("JWKS %s: fetch failed (%s); %s", self.url, exc or type(exc).__name__, stale)
            return False
        finally:
            self._inflight = None
        self._last_success = self._clock()
        new = KeySet(keys)
        if self._keys is not None and _fingerprint(new) == _fingerprint(self._keys):
            return False
        self._keys = new
        self.version += 1
        _LAST_GOOD[self.url] = new
        log.info("JWKS %s: %d keys", self.url, len(new))
        return True

    async def start(self) -> None:
        """Idempotent: every plugin instance sharing this source calls it; one background task runs."""
        self._users += 1
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None

    async def _run(self) -> None:
        while True:
            since = self._clock() - self._last_success
            if since >= self.refresh_interval:
                await self.refresh()
            if self._clock() - self._last_success < self.refresh_interval:
                delay = self.refresh_interval - (self._clock() - self._last_success)
            else:  # failing: retry sooner than the normal interval, but never faster than the cooldown
                delay = min(self.refresh_interval, max(self.cooldown, 1.0))
            await asyncio.sleep(max(delay, 0.05))


def jwks_source(shared: dict[str, Any], url: str, refresh: float, cooldown: float, timeout: float) -> JwksSource:
    """The one source for `url` in this config generation (kept in `BuildContext.shared`)."""
    sources: dict[str, JwksSource] = shared.setdefault("auth.jwks_sources", {})
    source = sources.get(url)
    if source is None:
        source = sources[url] = JwksSource(url, refresh, cooldown, timeout)
    return source
