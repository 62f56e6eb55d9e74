"""An OAuth 2.0 token introspection client (RFC 7662) with a bounded cache.

The gateway authenticates to the introspection endpoint with its client credentials (HTTP Basic, or
`client_secret_post`). A token is good when the answer says `"active": true` (the JSON boolean, nothing
else) and its `exp`/`nbf`, if present, hold. Answers are cached per token for `cache`: good ones never past
the token's `exp`, refusals too, so a flood of one bad token costs one call. Concurrent requests with the same
token share one call. An endpoint that is down or answers nonsense is "unavailable" (503), never "valid".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from frontgate.auth.errors import invalid, unavailable
from frontgate.auth.jose import JoseError, json_object
from frontgate.auth.jwt_verify import is_number

log = logging.getLogger("frontgate.auth")

MAX_RESPONSE_BYTES = 64 * 1024

Post = Callable[[dict[str, str]], Awaitable[tuple[int, bytes]]]


@dataclass(slots=True)
class _Entry:
    expires: float
    claims: dict[str, Any] | None  # None: inactive


class Introspector:
    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        *,
        auth_method: Literal["basic", "post"] = "basic",
        cache_ttl: float = 60.0,
        timeout: float = 2.0,
        cache_size: int = 10_000,
        token_type_hint: str | None = "access_token",
        clock_skew: float = 60.0,
        clock: Callable[[], float] = time.time,
        post: Post | None = None,
    ) -> None:
        self.url = url
        self._client_id = client_id
        self._client_secret = client_secret
        self.auth_method = auth_method
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        self.cache_size = cache_size
        self.token_type_hint = token_type_hint
        self.clock_skew = clock_skew
        self.clock = clock
        self._post = post or self._http_post
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0  # endpoint calls made (tests assert on caching)

    def __repr__(self) -> str:
        return f"<Introspector {self.url} cached={len(self._cache)} calls={self.calls}>"

    async def introspect(self, token: str) -> dict[str, Any]:
        """The introspection response of an active token, or `AuthFailure`."""
        entry = self._cache.get(token)
        if entry is not None:
            if self.clock() < entry.expires:
                self._cache.move_to_end(token)
                return _claims_or_fail(entry)
            del self._cache[token]
        task = self._inflight.get(token)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(token))
            self._inflight[token] = task
            task.add_done_callback(lambda _t: self._inflight.pop(token, None))
        return _claims_or_fail(await asyncio.shield(task))

    async def _lookup(self, token: str) -> _Entry:
        form = {"token": token}
        if self.token_type_hint:
            form["token_type_hint"] = self.token_type_hint
        if self.auth_method == "post":
            form["client_id"] = self._client_id
            form["client_secret"] = self._client_secret
        self.calls += 1
        try:
            status, body = await asyncio.wait_for(self._post(form), self.timeout)
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            log.warning("introspection %s failed: %s", self.url, type(exc).__name__)
            raise unavailable("introspection_unreachable") from None
        if status != 200:
            log.warning("introspection %s answered HTTP %d", self.url, status)
            raise unavailable("introspection_error")
        try:
            answer = json_object(body)
        except JoseError:
            log.warning("introspection %s answered something that is not a JSON object", self.url)
            raise unavailable("introspection_error") from None
        entry = self._judge(answer)
        self._remember(token, entry)
        return entry

    def _judge(self, answer: dict[str, Any]) -> _Entry:
        now = self.clock()
        negative = _Entry(now + self.cache_ttl, None)
        if answer.get("active") is not True:
            return negative
        exp = answer.get("exp")
        nbf = answer.get("nbf")
        if exp is not None and (not is_number(exp) or now > exp + self.clock_skew):
            return negative
        if nbf is not None and (not is_number(nbf) or now + self.clock_skew < nbf):
            return negative
        expires = now + self.cache_ttl
        if exp is not None:
            expires = min(expires, float(exp))
        return _Entry(expires, answer)

    def _remember(self, token: str, entry: _Entry) -> None:
        if self.cache_size <= 0 or entry.expires <= self.clock():
            return
        self._cache[token] = entry
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _http_post(self, form: dict[str, str]) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            auth = (self._client_id, self._client_secret) if self.auth_method == "basic" else None
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, auth=auth)
            self._client_loop = loop
        headers = {"accept": "application/json"}
        async with self._client.stream("POST", self.url, data=form, headers=headers) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    return 502, b""
            return response.status_code, bytes(body)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _claims_or_fail(entry: _Entry) -> dict[str, Any]:
    if entry.claims is None:
        raise invalid("inactive")
    return entry.claims
