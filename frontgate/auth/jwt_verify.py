"""JWT verification (RFC 7519 over RFC 7515 compact JWS), built once per config and shared by the routes that
use the same `jwt` settings.

The order is cheap-to-dear and refuses before any key is touched: size, shape, strict base64url and JSON,
`alg` against the allow-list (never `none`), `crit` (we implement no extension, so any `crit` is refused),
then the key: chosen only among the configured keys by `alg` family and `kid`, then the signature, then
the claims (`exp` required, `nbf`, `iat`, `iss` exact, `aud` one-of, `max_lifetime`), all numeric dates
checked as numbers with the configured skew.

A verified token is cached (bounded LRU keyed by the raw token, or by the raw header line it came in when the
caller says so) until its `exp`, so the same token never redoes the RSA math; an entry is dropped when its
issuer's key set changes (a key removed from a JWKS is revoked for cached tokens too).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from frontgate.auth.errors import AuthFailure, invalid, unavailable
from frontgate.auth.jose import JoseError, b64url_decode, json_object, verify_signature
from frontgate.auth.jwks import KeySource

MAX_KID_LENGTH = 256
MAX_KEYS_TRIED = 8  # a token without a kid is tried against at most this many keys of its algorithm


@dataclass(frozen=True, slots=True)
class IssuerPolicy:
    issuer: str | None  # None: `iss` is not checked (a single issuer with inline keys only)
    audiences: frozenset[str]  # empty: `aud` is not checked
    source: KeySource


@dataclass(slots=True)
class VerifiedToken:
    claims: dict[str, Any]
    expires: float  # the token's exp
    issuer: int  # index of the IssuerPolicy that verified it
    source: KeySource  # that policy's keys, whose `version` must still be `key_version` on a cache hit
    key_version: int
    memo: dict[Any, Any] = field(default_factory=dict)  # per-token results the plugins derive once


def is_number(value: Any) -> bool:
    """A JSON number usable as a NumericDate: int or float, finite, not a boolean."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and abs(value) < 1e15  # beyond any date; keeps float() exact enough
    except OverflowError:  # an int too large for a float
        return False


class JwtVerifier:
    def __init__(
        self,
        issuers: Sequence[IssuerPolicy],
        algorithms: frozenset[str],
        *,
        clock_skew: float = 60.0,
        max_lifetime: float | None = None,
        max_token_bytes: int = 8192,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuers:
            raise ValueError("a verifier needs at least one issuer")
        if any(a.lower() == "none" for a in algorithms):
            raise ValueError("'none' is never an allowed algorithm")
        self.issuers = tuple(issuers)
        self.algorithms = algorithms
        self.clock_skew = clock_skew
        self.max_lifetime = max_lifetime
        self.max_token_bytes = max_token_bytes
        self.cache_size = cache_size
        self.clock = clock
        self._cache: OrderedDict[str | bytes, VerifiedToken] = OrderedDict()
        self._by_issuer = {p.issuer: i for i, p in enumerate(self.issuers) if p.issuer is not None}
        self.signature_checks = 0  # how often the asymmetric/HMAC math actually ran (tests assert on it)

    def cached(self, key: str | bytes) -> VerifiedToken | None:
        """The token cached under `key` (see `verify`), if it has not expired since (`exp`: the clock is read on
        every hit) and its issuer's key set has not changed since."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        if self.clock() < entry.expires and entry.source.version == entry.key_version:
            self._cache.move_to_end(key)
            return entry
        del self._cache[key]
        return None

    async def verify(self, token: str, key: str | bytes | None = None) -> VerifiedToken:
        """The verified token, or `AuthFailure` with a short reason. It is cached under `key`, by default the
        token itself: a caller may use the header line the token came in (all of it, so it stands for that
        token alone), to find it again without taking that line apart."""
        if key is None:
            key = token
        hit = self.cached(key)
        if hit is not None:
            return hit
        if len(token) > self.max_token_bytes:
            raise invalid("token_too_large")
        parts = token.split(".")
        if len(parts) != 3:
            raise invalid("malformed")
        header = _decode_json(parts[0], "malformed_header")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise invalid("malformed_header")
        if alg.lower() == "none":
            raise invalid("alg_none")
        if alg not in self.algorithms:
            raise invalid("alg_not_allowed")
        if "crit" in header:
            raise invalid("unknown_crit")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            raise invalid("bad_kid")
        try:
            signature = b64url_decode(parts[2])
        except JoseError:
            raise invalid("malformed_signature") from None
        if not signature:
            raise invalid("missing_signature")
        claims = _decode_json(parts[1], "malformed_payload")
        index = self._issuer_index(claims)
        policy = self.issuers[index]
        version = policy.source.version
        await self._check_signature(policy, alg, kid, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
        expires = self._check_claims(policy, claims)
        verified = VerifiedToken(claims, expires, index, policy.source, version)
        if version == policy.source.version:
            self._remember(key, verified)
        return verified

    def _issuer_index(self, claims: dict[str, Any]) -> int:
        if len(self.issuers) == 1:
            return 0
        # Several issuers: the unverified `iss` only picks whose keys to try; it is checked again below.
        iss = claims.get("iss")
        index = self._by_issuer.get(iss) if isinstance(iss, str) else None
        if index is None:
            raise invalid("wrong_issuer")
        return index

    async def _check_signature(
        self, policy: IssuerPolicy, alg: str, kid: str | None, signing_input: bytes, signature: bytes
    ) -> None:
        keys = await policy.source.ready()
        if keys is None or not len(keys):
            raise unavailable("no_keys")
        candidates = keys.candidates(alg, kid)
        if not candidates and kid is not None and not keys.knows(kid):
            if await policy.source.refresh_for_unknown_kid():
                keys = policy.source.current()
                candidates = keys.candidates(alg, kid) if keys is not None else []
            if not candidates:
                raise invalid("unknown_kid")
        if not candidates:
            raise invalid("no_key_for_alg")
        for key in candidates[:MAX_KEYS_TRIED]:
            self.signature_checks += 1
            if verify_signature(alg, key, signing_input, signature):
                return
        raise invalid("bad_signature")

    def _check_claims(self, policy: IssuerPolicy, claims: dict[str, Any]) -> float:
        now = self.clock()
        skew = self.clock_skew
        exp = claims.get("exp")
        if exp is None:
            raise invalid("missing_exp")
        if not is_number(exp):
            raise invalid("bad_exp")
        if now > exp + skew:
            raise invalid("expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not is_number(nbf):
                raise invalid("bad_nbf")
            if now + skew < nbf:
                raise invalid("not_yet_valid")
        iat = claims.get("iat")
        if iat is not None:
            if not is_number(iat):
                raise invalid("bad_iat")
            if iat > now + skew:
                raise invalid("issued_in_future")
        if self.max_lifetime is not None:
            start = iat if iat is not None else now
            if exp - start > self.max_lifetime + skew:
                raise invalid("lifetime_too_long")
        if policy.issuer is not None and claims.get("iss") != policy.issuer:
            raise invalid("wrong_issuer")
        if policy.audiences:
            aud = claims.get("aud")
            values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
            if values is None or not any(isinstance(a, str) and a in policy.audiences for a in values):
                raise invalid("wrong_audience")
        return float(exp)

    def _remember(self, key: str | bytes, verified: VerifiedToken) -> None:
        if self.cache_size <= 0 or verified.expires <= self.clock():
            return
        self._cache[key] = verified
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def cache_len(self) -> int:
        return len(self._cache)


def _decode_json(segment: str, reason: str) -> dict[str, Any]:
    try:
        return json_object(b64url_decode(segment))
    except JoseError:
        raise invalid(reason) from None


__all__ = ["AuthFailure", "IssuerPolicy", "JwtVerifier", "VerifiedToken", "is_number"]
