"""The JWT verifier on its own: published vectors, every attack from issue 3, claims, and the token cache.
No sockets, no wall clock (the verifier's clock is injected)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from frontgate.auth.errors import AuthFailure
from frontgate.auth.jose import (
    KeySet,
    VerifyKey,
    b64url_decode,
    key_from_jwk,
    key_from_pem,
    make_key,
    verify_signature,
)
from frontgate.auth.jwks import StaticKeys
from frontgate.auth.jwt_verify import IssuerPolicy, JwtVerifier, VerifiedToken
from tests.idp import Signer, b64, b64json

NOW = 1_700_000_000.0
ISS = "https://idp.test/"
AUD = "api.test"
RSA = Signer.rsa("rsa-1")
EC = Signer.ec("ec-1")
ED = Signer.ed25519("ed-1")
SECRET = b"0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def good_claims(**extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "user-7", "iat": int(NOW), "exp": int(NOW) + 300}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def verifier(
    keys: list[VerifyKey] | None = None,
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA"),
    clock: Clock | None = None,
    **options: Any,
) -> JwtVerifier:
    if keys is None:
        keys = [key_from_jwk(s.public_jwk(), allow_secret=False) for s in (RSA, EC, ED)]
    policy = IssuerPolicy(ISS, frozenset({AUD}), StaticKeys(keys))
    return JwtVerifier([policy], frozenset(algorithms), clock=clock or Clock(), **options)


def verify(v: JwtVerifier, token: str) -> VerifiedToken:
    return asyncio.run(v.verify(token))


def refused(v: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthFailure) as caught:
        verify(v, token)
    return caught.value.reason


# --- published vectors ----------------------------------------------------------------------------------

RFC7515_PAYLOAD = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
RFC7515_A1 = ("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." + RFC7515_PAYLOAD
              + ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
RFC7515_A1_KEY = {"kty": "oct",
                  "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}
RFC7515_A2 = (
    "eyJhbGciOiJSUzI1NiJ9." + RFC7515_PAYLOAD + ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7"
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQB"
    "MHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9F"
    "s98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
)
RFC7515_A2_KEY = {
    "kty": "RSA", "e": "AQAB",
    "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-"
         "SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapH"
         "g665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4F"
         "RWyuXpoQ",
}
RFC7515_A3 = ("eyJhbGciOiJFUzI1NiJ9." + RFC7515_PAYLOAD
              + ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q")
RFC7515_A3_KEY = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                  "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
RFC8037_A4 = ("eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
              "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg")
RFC8037_A4_KEY = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


@pytest.mark.parametrize(
    ("token", "jwk", "alg"),
    [(RFC7515_A1, RFC7515_A1_KEY, "HS256"), (RFC7515_A2, RFC7515_A2_KEY, "RS256"),
     (RFC7515_A3, RFC7515_A3_KEY, "ES256")],
    ids=["rfc7515-A1-HS256", "rfc7515-A2-RS256", "rfc7515-A3-ES256"],
)
def test_rfc7515_example_tokens_verify_and_any_flipped_bit_does_not(token: str, jwk: dict[str, str], alg: str) -> None:
    policy = IssuerPolicy("joe", frozenset(), StaticKeys([key_from_jwk(jwk, allow_secret=True)]))
    v = JwtVerifier([policy], frozenset({alg}), clock=Clock(1300819000))
    assert verify(v, token).claims["http://example.com/is_root"] is True
    head, payload, sig = token.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    assert refused(v, f"{head}.{payload}.{flipped}") in ("bad_signature", "malformed_signature")


def test_rfc8037_ed25519_example_signature_verifies() -> None:
    key = key_from_jwk(RFC8037_A4_KEY, allow_secret=False)
    head, payload, sig = RFC8037_A4.split(".")
    assert verify_signature("EdDSA", key, f"{head}.{payload}".encode(), b64url_decode(sig))
    assert not verify_signature("EdDSA", key, f"{head}.{payload}x".encode(), b64url_decode(sig))


@pytest.mark.parametrize(
    "signer", [RSA, EC, ED, Signer.rsa("ps", alg="PS256")], ids=["RS256", "ES256", "EdDSA", "PS256"]
)
def test_tokens_signed_by_each_key_type_verify(signer: Signer) -> None:
    v = verifier([key_from_jwk(signer.public_jwk(), allow_secret=False)], algorithms=(signer.alg,))
    assert verify(v, signer.token(good_claims())).claims["sub"] == "user-7"


# --- algorithm attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "c2ln"])
def test_alg_none_in_any_spelling_is_refused(alg: str, signature: str) -> None:
    token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(good_claims())}.{signature}"
    assert refused(verifier(), token) == "alg_none"


def test_none_cannot_even_be_configured() -> None:
    with pytest.raises(ValueError):
        verifier(algorithms=("RS256", "none"))


def test_alg_outside_the_allow_list_is_refused_before_any_key_is_tried() -> None:
    v = verifier(algorithms=("ES256",))
    assert refused(v, RSA.token(good_claims())) == "alg_not_allowed"
    assert v.signature_checks == 0


def test_hs256_signed_with_the_rsa_public_key_pem_is_refused() -> None:
    forged = Signer.hmac(RSA.public_pem().encode(), kid="rsa-1").token(good_claims())
    rsa_only = verifier([key_from_pem(RSA.public_pem(), kid="rsa-1")], algorithms=("RS256",))
    assert refused(rsa_only, forged) == "alg_not_allowed"
    # Even where HS256 is allowed (with its own secret), the RSA key is never used as an HMAC secret.
    both = verifier([key_from_pem(RSA.public_pem(), kid="rsa-1"), make_key(SECRET)], algorithms=("RS256", "HS256"))
    assert refused(both, forged) == "bad_signature"
    assert verify(both, Signer.hmac(SECRET).token(good_claims())).claims["sub"] == "user-7"


def test_an_rsa_key_never_verifies_hmac_and_an_hmac_secret_never_verifies_rsa() -> None:
    rsa_key = key_from_pem(RSA.public_pem())
    secret = make_key(SECRET)
    assert "HS256" not in rsa_key.algorithms
    assert secret.algorithms == frozenset({"HS256"})  # 32 bytes: too short for HS384/HS512
    assert not verify_signature("HS256", rsa_key, b"x", b"y")


def test_es256_token_is_not_checked_against_a_p384_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = make_key(ec.generate_private_key(ec.SECP384R1()).public_key(), kid="ec-1")
    assert refused(verifier([p384]), EC.token(good_claims())) == "no_key_for_alg"


def test_a_jwk_alg_restricts_its_key() -> None:
    jwk = {**RSA.public_jwk(), "alg": "RS512"}
    assert refused(verifier([key_from_jwk(jwk, allow_secret=False)]), RSA.token(good_claims())) == "no_key_for_alg"


# --- signatures -----------------------------------------------------------------------------------------


def test_null_and_truncated_and_zero_signatures_are_refused() -> None:
    v = verifier()
    head, payload, sig = RSA.token(good_claims()).split(".")
    assert refused(v, f"{head}.{payload}.") == "missing_signature"
    assert refused(v, f"{head}.{payload}.{sig[:-8]}") in ("bad_signature", "malformed_signature")
    assert refused(v, f"{head}.{payload}.{b64(b64url_decode(sig)[:-1])}") == "bad_signature"
    assert refused(v, f"{head}.{payload}.{b64(b64url_decode(sig)[:128])}") == "bad_signature"
    ehead, epayload, _ = EC.token(good_claims()).split(".")
    assert refused(v, f"{ehead}.{epayload}.{b64(bytes(64))}") == "bad_signature"
    assert refused(v, f"{ehead}.{epayload}.{b64(bytes(63))}") == "bad_signature"


def test_a_valid_signature_over_other_claims_is_refused() -> None:
    v = verifier()
    head, _, sig = RSA.token(good_claims()).split(".")
    assert refused(v, f"{head}.{b64json(good_claims(sub='admin'))}.{sig}") == "bad_signature"


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_keys_named_in_the_token_header_are_never_used(member: str) -> None:
    attacker = Signer.rsa("rsa-1")
    values: dict[str, Any] = {"jwk": attacker.public_jwk(), "jku": "http://127.0.0.1:9/jwks", "x5u": "http://127.0.0.1:9/cert",
              "x5c": ["MIIB"]}
    forged = attacker.token(good_claims(), **{member: values[member]})
    assert refused(verifier(), forged) == "bad_signature"


@pytest.mark.parametrize("kid", ["../../../../dev/null", "' OR '1'='1", "rsa-1\u0000", "rsa-1 ", "*", ""])
def test_kid_injection_strings_only_select_among_configured_keys(kid: str) -> None:
    assert refused(verifier(), RSA.token(good_claims(), kid=kid)) == "unknown_kid"


@pytest.mark.parametrize("kid", [7, ["rsa-1"], {"a": 1}, "k" * 300])
def test_a_kid_that_is_not_a_short_string_is_refused(kid: Any) -> None:
    assert refused(verifier(), RSA.token(good_claims(), kid=kid)) == "bad_kid"


def test_a_key_without_kid_answers_for_any_kid() -> None:
    v = verifier([key_from_pem(RSA.public_pem())], algorithms=("RS256",))
    assert verify(v, RSA.token(good_claims(), kid="whatever")).claims["sub"] == "user-7"


def test_unknown_crit_is_refused_even_with_a_good_signature() -> None:
    assert refused(verifier(), RSA.token(good_claims(), crit=["exp"])) == "unknown_crit"
    assert refused(verifier(), RSA.token(good_claims(), crit=[])) == "unknown_crit"


# --- shape ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("abc", "malformed"),
        ("a.b", "malformed"),
        ("a.b.c.d", "malformed"),
        ("a.b.c.d.e", "malformed"),
        ("....", "malformed"),
        (f"{b64json({'alg': 'RS256'})}=.{b64json(good_claims())}.c2ln", "malformed_header"),
        (f"{b64json({'alg': 'RS256'})}.{b64json(good_claims())}.c2l+", "malformed_signature"),
        (f"{b64(b'not json')}.{b64json(good_claims())}.c2ln", "malformed_header"),
        (f"{b64json(['alg', 'RS256'])}.{b64json(good_claims())}.c2ln", "malformed_header"),
        (b64(b'{"alg":"none","alg":"RS256"}') + f".{b64json(good_claims())}.c2ln", "malformed_header"),
        (f"{b64json({'alg': 7})}.{b64json(good_claims())}.c2ln", "malformed_header"),
        (f"{b64(bytes([0xff, 0xfe]))}.{b64json(good_claims())}.c2ln", "malformed_header"),
        ("." * 2, "malformed_header"),
    ],
)
def test_malformed_tokens_are_refused_cleanly(token: str, reason: str) -> None:
    assert refused(verifier(), token) == reason


@pytest.mark.parametrize("payload", [b"[1,2]", b'"text"', b"not json", b'{"exp": NaN}', b'{"exp": 1, "exp": 2}',
                                     b'{"exp": ' + b"9" * 5000 + b"}"])
def test_a_signed_payload_that_is_not_a_plain_json_object_is_refused(payload: bytes) -> None:
    assert refused(verifier(), RSA.token(payload)) == "malformed_payload"


def test_a_60kb_token_is_refused_without_parsing() -> None:
    v = verifier()
    token = RSA.token(good_claims(padding="x" * 60_000))
    assert refused(v, token) == "token_too_large"
    assert v.signature_checks == 0


# --- claims ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": int(NOW) - 61}, "expired"),
        ({"exp": NOW - 61.5}, "expired"),
        ({"exp": str(int(NOW) + 300)}, "bad_exp"),
        ({"exp": True}, "bad_exp"),
        ({"exp": None}, "missing_exp"),
        ({"exp": 10**30}, "bad_exp"),
        ({"nbf": int(NOW) + 61}, "not_yet_valid"),
        ({"nbf": "0"}, "bad_nbf"),
        ({"iat": int(NOW) + 3600}, "issued_in_future"),
        ({"iss": "https://idp.test/evil"}, "wrong_issuer"),
        ({"iss": "https://idp.test"}, "wrong_issuer"),
        ({"iss": "https://idp.test/x"}, "wrong_issuer"),
        ({"iss": ["https://idp.test/"]}, "wrong_issuer"),
        ({"iss": None}, "wrong_issuer"),
        ({"aud": "api.test.evil"}, "wrong_audience"),
        ({"aud": ["other", "api"]}, "wrong_audience"),
        ({"aud": None}, "wrong_audience"),
        ({"aud": 7}, "wrong_audience"),
    ],
)
def test_bad_claims_are_refused(changes: dict[str, Any], reason: str) -> None:
    assert refused(verifier(), RSA.token(good_claims(**changes))) == reason


@pytest.mark.parametrize(
    "changes",
    [{"exp": NOW + 30.25}, {"exp": int(NOW) - 59}, {"nbf": int(NOW) + 59}, {"aud": ["other", AUD]}, {"iat": None}],
    ids=["float-exp", "expired-within-skew", "nbf-within-skew", "aud-list", "no-iat"],
)
def test_good_claims_are_accepted(changes: dict[str, Any]) -> None:
    assert verify(verifier(), RSA.token(good_claims(**changes))).claims["sub"] == "user-7"


def test_clock_skew_is_configurable() -> None:
    strict = verifier(clock_skew=0)
    assert refused(strict, RSA.token(good_claims(exp=int(NOW) - 1))) == "expired"


def test_max_lifetime_refuses_long_lived_tokens() -> None:
    v = verifier(max_lifetime=3600)
    assert verify(v, RSA.token(good_claims(exp=int(NOW) + 3600)))
    assert refused(v, RSA.token(good_claims(exp=int(NOW) + 86400))) == "lifetime_too_long"
    assert refused(v, RSA.token(good_claims(exp=int(NOW) + 86400, iat=None))) == "lifetime_too_long"


def test_several_issuers_each_with_their_own_keys() -> None:
    other = Signer.ec("other-ec")
    policies = [
        IssuerPolicy(ISS, frozenset({AUD}), StaticKeys([key_from_jwk(RSA.public_jwk(), allow_secret=False)])),
        IssuerPolicy("https://other.test/", frozenset({"other-api"}),
                     StaticKeys([key_from_jwk(other.public_jwk(), allow_secret=False)])),
    ]
    v = JwtVerifier(policies, frozenset({"RS256", "ES256"}), clock=Clock())
    assert verify(v, RSA.token(good_claims())).issuer == 0
    assert verify(v, other.token(good_claims(iss="https://other.test/", aud="other-api"))).issuer == 1
    # A token claiming the second issuer but signed by the first's key: only the second's keys are tried.
    assert refused(v, RSA.token(good_claims(iss="https://other.test/", aud="other-api"))) == "unknown_kid"
    assert refused(v, RSA.token(good_claims(iss="https://other.test/", aud="other-api"), kid=None)) == "no_key_for_alg"
    assert refused(v, RSA.token(good_claims(iss="https://unknown.test/"))) == "wrong_issuer"


# --- the verified-token cache ---------------------------------------------------------------------------


def test_the_same_token_is_verified_once_then_served_from_cache() -> None:
    v = verifier()
    token = RSA.token(good_claims())
    first = verify(v, token)
    for _ in range(5):
        assert verify(v, token) is first
    assert v.signature_checks == 1


def test_a_cached_token_is_never_served_past_its_exp() -> None:
    clock = Clock()
    v = verifier(clock=clock, clock_skew=0)
    token = RSA.token(good_claims(exp=int(NOW) + 10))
    verify(v, token)
    clock.now = NOW + 10.5
    assert refused(v, token) == "expired"
    assert v.cache_len() == 0


def test_a_token_can_be_cached_under_the_header_line_it_came_in() -> None:
    clock = Clock()
    v = verifier(clock=clock, clock_skew=0)
    token = RSA.token(good_claims(exp=int(NOW) + 10))
    line = f"authorization: Bearer {token}\r\n".encode()
    first = asyncio.run(v.verify(token, line))
    assert v.cached(line) is first and v.cached(token) is None
    assert asyncio.run(v.verify(token, line)) is first and v.signature_checks == 1
    clock.now = NOW + 10.5  # and it still expires on time
    assert v.cached(line) is None and v.cache_len() == 0


def test_the_cache_is_bounded() -> None:
    v = verifier(cache_size=3)
    for i in range(10):
        verify(v, RSA.token(good_claims(jti=str(i))))
    assert v.cache_len() == 3


def test_refused_tokens_are_not_cached() -> None:
    v = verifier()
    token = RSA.token(good_claims(aud="elsewhere"))
    refused(v, token)
    refused(v, token)
    assert v.cache_len() == 0
    assert v.signature_checks == 2


class _Rotating(StaticKeys):
    """A key source whose key set can change (like a JWKS), without any fetching."""

    def __init__(self, keys: list[VerifyKey]) -> None:
        super().__init__(keys)
        self.version = 0

    def replace(self, keys: list[VerifyKey]) -> None:
        self._keys = KeySet(keys)
        self.version += 1


def test_a_key_removed_from_the_set_revokes_cached_tokens() -> None:
    source = _Rotating([key_from_jwk(RSA.public_jwk(), allow_secret=False)])
    v = JwtVerifier([IssuerPolicy(ISS, frozenset({AUD}), source)], frozenset({"RS256"}), clock=Clock())
    token = RSA.token(good_claims())
    verify(v, token)
    source.replace([key_from_jwk(Signer.rsa("rsa-2").public_jwk(), allow_secret=False)])
    assert refused(v, token) == "unknown_kid"


def test_claims_are_the_token_payload() -> None:
    extra = {"tenant": "acme", "scope": "orders:read orders:write", "nested": {"a": [1, 2]}}
    result = verify(verifier(), RSA.token(good_claims(**extra)))
    assert {k: result.claims[k] for k in extra} == json.loads(json.dumps(extra))
