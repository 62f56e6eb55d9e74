"""The JWKS key source without sockets: a scripted fetch function and an injected clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from frontgate.auth import jwks
from frontgate.auth.errors import AuthFailure
from frontgate.auth.jose import JoseError
from frontgate.auth.jwks import JwksSource
from frontgate.auth.jwt_verify import IssuerPolicy, JwtVerifier
from tests.idp import Signer

ISS = "https://idp.test/"
OLD = Signer.rsa("old")
NEW = Signer.rsa("new")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Issuer:
    """Scripted answers for the fetch function."""

    def __init__(self, signers: list[Signer]) -> None:
        self.signers = signers
        self.fetches = 0
        self.down = False
        self.document: dict[str, Any] | None = None

    async def fetch(self, url: str, timeout: float) -> dict[str, Any]:
        self.fetches += 1
        await asyncio.sleep(0)
        if self.down:
            raise JoseError("the JWKS URL answered HTTP 503")
        if self.document is not None:
            return self.document
        return {"keys": [s.public_jwk() for s in self.signers]}


@pytest.fixture(autouse=True)
def _forget_last_good() -> None:
    jwks._LAST_GOOD.clear()


def source(issuer: Issuer, clock: Clock, url: str = "https://idp.test/jwks") -> JwksSource:
    return JwksSource(url, refresh=300, cooldown=5, timeout=2, fetch=issuer.fetch, clock=clock)


def claims() -> dict[str, Any]:
    import time

    now = int(time.time())
    return {"iss": ISS, "exp": now + 300, "iat": now, "sub": "u"}


def verifier_for(src: JwksSource) -> JwtVerifier:
    return JwtVerifier([IssuerPolicy(ISS, frozenset(), src)], frozenset({"RS256"}))


def test_the_first_request_waits_for_the_first_fetch() -> None:
    issuer = Issuer([OLD])
    src = source(issuer, Clock())

    async def run() -> None:
        assert (await verifier_for(src).verify(OLD.token(claims()))).claims["sub"] == "u"

    asyncio.run(run())
    assert issuer.fetches == 1


def test_an_unknown_kid_triggers_one_refresh_and_the_rotated_key_works() -> None:
    issuer = Issuer([OLD])
    clock = Clock()
    src = source(issuer, clock)
    v = verifier_for(src)

    async def run() -> None:
        await src.refresh()
        issuer.signers = [OLD, NEW]
        clock.now += 10
        assert (await v.verify(NEW.token(claims()))).claims["sub"] == "u"

    asyncio.run(run())
    assert issuer.fetches == 2


def test_unknown_kids_refresh_at_most_once_per_cooldown() -> None:
    issuer = Issuer([OLD])
    clock = Clock()
    src = source(issuer, clock)
    v = verifier_for(src)

    async def run() -> list[str]:
        await src.refresh()
        clock.now += 5
        reasons = []
        for i in range(20):
            with pytest.raises(AuthFailure) as caught:
                await v.verify(OLD.token(claims(), kid=f"garbage-{i}"))
            reasons.append(caught.value.reason)
        clock.now += 5
        with pytest.raises(AuthFailure):
            await v.verify(OLD.token(claims(), kid="garbage-late"))
        return reasons

    reasons = asyncio.run(run())
    assert set(reasons) == {"unknown_kid"}
    assert issuer.fetches == 3  # the first fetch, one for the first garbage kid, one after the cooldown


def test_concurrent_unknown_kids_share_one_fetch() -> None:
    issuer = Issuer([OLD, NEW])
    src = source(issuer, Clock())
    v = verifier_for(src)

    async def run() -> None:
        results = await asyncio.gather(*(v.verify(NEW.token(claims(), jti=str(i))) for i in range(10)))
        assert all(r.claims["sub"] == "u" for r in results)

    asyncio.run(run())
    assert issuer.fetches == 1


def test_when_the_issuer_is_down_the_last_good_keys_keep_working() -> None:
    issuer = Issuer([OLD])
    clock = Clock()
    src = source(issuer, clock)
    v = verifier_for(src)

    async def run() -> None:
        assert await src.refresh()
        issuer.down = True
        clock.now += 600
        assert not await src.refresh()
        assert (await v.verify(OLD.token(claims(), jti="after-outage"))).claims["sub"] == "u"

    asyncio.run(run())
    assert src.failures == 1


def test_a_new_source_for_the_same_url_starts_from_the_last_good_keys() -> None:
    issuer = Issuer([OLD])
    asyncio.run(source(issuer, Clock()).refresh())
    issuer.down = True
    reloaded = source(issuer, Clock())
    assert reloaded.current() is not None
    assert asyncio.run(verifier_for(reloaded).verify(OLD.token(claims()))).claims["sub"] == "u"


def test_no_keys_at_all_is_unavailable_not_invalid() -> None:
    issuer = Issuer([OLD])
    issuer.down = True
    with pytest.raises(AuthFailure) as caught:
        asyncio.run(verifier_for(source(issuer, Clock())).verify(OLD.token(claims())))
    assert (caught.value.reason, caught.value.kind) == ("no_keys", "unavailable")


@pytest.mark.parametrize(
    "document",
    [{"keys": []}, {"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}, {"nokeys": 1},
     {"keys": [{**OLD.public_jwk(), "use": "enc"}]}],
    ids=["empty", "symmetric-only", "not-a-jwks", "encryption-key"],
)
def test_a_jwks_without_usable_signature_keys_does_not_replace_good_keys(document: dict[str, Any]) -> None:
    issuer = Issuer([OLD])
    clock = Clock()
    src = source(issuer, clock)

    async def run() -> None:
        await src.refresh()
        issuer.document = document
        clock.now += 600
        assert not await src.refresh()

    asyncio.run(run())
    keys = src.current()
    assert keys is not None and [k.kid for k in keys.keys] == ["old"]


def test_the_same_keys_again_do_not_invalidate_cached_tokens() -> None:
    issuer = Issuer([OLD])
    clock = Clock()
    src = source(issuer, clock)

    async def run() -> None:
        assert await src.refresh()
        clock.now += 600
        assert not await src.refresh()

    asyncio.run(run())
    assert src.version == 1


def test_background_refresh_runs_and_stops() -> None:
    issuer = Issuer([OLD])
    src = JwksSource("https://idp.test/jwks", refresh=1, cooldown=0, timeout=1, fetch=issuer.fetch)

    async def run() -> None:
        await src.start()
        await src.start()  # a second plugin instance sharing the source
        await asyncio.sleep(0.05)
        await src.stop()
        assert src._runner is not None  # still used by the other instance
        await src.stop()
        assert src._runner is None

    asyncio.run(run())
    assert issuer.fetches == 1
