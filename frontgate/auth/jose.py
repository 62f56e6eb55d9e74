"""The JOSE pieces a verifier needs, and nothing else: strict base64url and JSON, public keys from JWKs, PEM
or secrets, and signature checks for the algorithms we allow.

Only verification is here (the gateway never signs). Every key knows the algorithms it may verify, derived
from its type and curve (and narrowed by a JWK's own `alg`), so a token can never pick a key of the wrong
kind: an HS256 token is never checked against an RSA or EC public key, an ES256 token never against a P-384
key, and `none` is not an algorithm at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

Family = Literal["RSA", "EC", "OKP", "oct"]

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
EDDSA_ALGORITHMS = {"Ed25519": frozenset({"EdDSA", "Ed25519"}), "Ed448": frozenset({"EdDSA", "Ed448"})}
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA", "Ed25519", "Ed448"} | HMAC_ALGORITHMS

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_EC_COORDINATE_BYTES = {"ES256": 32, "ES384": 48, "ES512": 66}
MIN_RSA_BITS = 2048

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


class JoseError(ValueError):
    """Malformed input: a bad segment, bad JSON, a key we cannot use. The message names no secret."""


def b64url_decode(segment: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2): other characters, padding and non-canonical trailing
    bits are refused, so one signature has exactly one spelling."""
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise JoseError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JoseError("not base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        raise JoseError("non-canonical base64url")
    return raw


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JoseError("duplicate member in JSON object")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise JoseError(f"JSON constant {name} is not allowed")


def json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes; duplicate members and NaN/Infinity are refused (RFC 7515 §4, RFC 8259)."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, duplicates, NaN, 5000-digit numbers
        raise JoseError("not a JSON object") from exc
    if not isinstance(value, dict):
        raise JoseError("not a JSON object")
    return value


# --- keys ---------------------------------------------------------------------------------------------

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One key and the algorithms it may verify."""

    kid: str | None
    family: Family
    algorithms: frozenset[str]
    key: PublicKey | bytes

    def describe(self) -> str:
        """For logs: type and kid, never the key."""
        return f"{self.family} key" + (f" kid={self.kid!r}" if self.kid else "")


def _family_algorithms(key: PublicKey | bytes) -> tuple[Family, frozenset[str]]:
    if isinstance(key, bytes):
        return "oct", frozenset(a for a in HMAC_ALGORITHMS if len(key) >= HMAC_MIN_BYTES[a])
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise JoseError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
        return "RSA", RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name)
        if crv is None:
            raise JoseError(f"unsupported EC curve {key.curve.name}")
        return "EC", frozenset({EC_ALGORITHMS[crv]})
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "OKP", EDDSA_ALGORITHMS["Ed25519"]
    return "OKP", EDDSA_ALGORITHMS["Ed448"]


def make_key(key: PublicKey | bytes, kid: str | None = None, alg: str | None = None) -> VerifyKey:
    family, algorithms = _family_algorithms(key)
    if alg is not None:
        if alg not in algorithms:
            raise JoseError(f"the key's alg {alg!r} does not fit a {family} key")
        algorithms = frozenset({alg})
    if not algorithms:
        raise JoseError("an HMAC secret must be at least 32 bytes")
    return VerifyKey(kid, family, algorithms, key)


def _b64_member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JoseError(f"JWK member {name!r} is missing or not a string")
    return b64url_decode(value)


def _int_member(jwk: Mapping[str, Any], name: str) -> int:
    return int.from_bytes(_b64_member(jwk, name), "big")


def key_from_jwk(jwk: Mapping[str, Any], *, allow_secret: bool) -> VerifyKey:
    """A verification key from a JWK (RFC 7517/7518/8037). Private members are ignored; symmetric (`oct`)
    keys only when `allow_secret` (they belong in the config, never in a JWKS fetched over the network)."""
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    alg = jwk.get("alg")
    if kid is not None and not isinstance(kid, str):
        raise JoseError("JWK kid must be a string")
    if alg is not None and not isinstance(alg, str):
        raise JoseError("JWK alg must be a string")
    key: PublicKey | bytes
    try:
        if kty == "RSA":
            key = rsa.RSAPublicNumbers(_int_member(jwk, "e"), _int_member(jwk, "n")).public_key()
        elif kty == "EC":
            curve = _EC_CURVES.get(str(jwk.get("crv")))
            if curve is None:
                raise JoseError("unsupported EC curve")
            numbers = ec.EllipticCurvePublicNumbers(_int_member(jwk, "x"), _int_member(jwk, "y"), curve)
            key = numbers.public_key()
        elif kty == "OKP":
            crv = jwk.get("crv")
            if crv == "Ed25519":
                key = ed25519.Ed25519PublicKey.from_public_bytes(_b64_member(jwk, "x"))
            elif crv == "Ed448":
                key = ed448.Ed448PublicKey.from_public_bytes(_b64_member(jwk, "x"))
            else:
                raise JoseError("unsupported OKP curve (Ed25519 and Ed448 are)")
        elif kty == "oct":
            if not allow_secret:
                raise JoseError("symmetric keys are not accepted from a JWKS")
            key = _b64_member(jwk, "k")
        else:
            raise JoseError("unsupported key type")
    except (ValueError, UnsupportedAlgorithm) as exc:
        if isinstance(exc, JoseError):
            raise
        raise JoseError("the JWK does not describe a valid public key") from exc
    return make_key(key, kid, alg)


def key_from_pem(pem: str, kid: str | None = None) -> VerifyKey:
    try:
        loaded = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise JoseError("not a PEM public key (SubjectPublicKeyInfo)") from exc
    if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
                      | ed448.Ed448PublicKey):
        raise JoseError("unsupported PEM key type")
    return make_key(loaded, kid)


def usable_jwks(document: Mapping[str, Any], *, allow_secret: bool) -> tuple[list[VerifyKey], list[str]]:
    """The signature keys of a JWKS, and a note for each key skipped (wrong `use`, unsupported, too weak)."""
    keys_value = document.get("keys")
    if not isinstance(keys_value, list):
        raise JoseError("a JWKS needs a 'keys' list")
    keys: list[VerifyKey] = []
    skipped: list[str] = []
    for index, jwk in enumerate(keys_value):
        if not isinstance(jwk, dict):
            skipped.append(f"keys[{index}]: not an object")
            continue
        use = jwk.get("use")
        ops = jwk.get("key_ops")
        if (use is not None and use != "sig") or (isinstance(ops, list) and "verify" not in ops):
            skipped.append(f"keys[{index}]: not a signature key")
            continue
        try:
            keys.append(key_from_jwk(jwk, allow_secret=allow_secret))
        except JoseError as exc:
            skipped.append(f"keys[{index}]: {exc}")
    return keys, skipped


class KeySet:
    """An immutable set of verification keys with lookups by kid and algorithm."""

    __slots__ = ("_by_kid", "_unnamed", "keys")

    def __init__(self, keys: Iterable[VerifyKey]) -> None:
        self.keys = tuple(keys)
        self._by_kid: dict[str, list[VerifyKey]] = {}
        for key in self.keys:
            if key.kid is not None:
                self._by_kid.setdefault(key.kid, []).append(key)
        self._unnamed = [k for k in self.keys if k.kid is None]

    def __len__(self) -> int:
        return len(self.keys)

    def knows(self, kid: str) -> bool:
        """Some key could answer for this kid: one carries it, or one carries no kid at all."""
        return kid in self._by_kid or bool(self._unnamed)

    def candidates(self, alg: str, kid: str | None) -> list[VerifyKey]:
        """Keys allowed to verify a token with this `alg` and `kid`. A kid only ever selects among the
        configured keys; a key without a kid answers for any kid."""
        pool = self.keys if kid is None else [*self._by_kid.get(kid, ()), *self._unnamed]
        return [k for k in pool if alg in k.algorithms]


# --- signatures ---------------------------------------------------------------------------------------


def verify_signature(alg: str, key: VerifyKey, signing_input: bytes, signature: bytes) -> bool:
    """True when `signature` is `alg` over `signing_input` by `key`. The key must allow `alg`."""
    if alg not in key.algorithms:
        return False
    material = key.key
    try:
        if isinstance(material, bytes):
            expected = hmac.new(material, signing_input, _HMAC_DIGESTS[alg]).digest()
            return hmac.compare_digest(expected, signature)
        if isinstance(material, rsa.RSAPublicKey):
            digest = _HASHES[alg[2:]]()
            pad: padding.AsymmetricPadding
            if alg.startswith("PS"):
                pad = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            else:
                pad = padding.PKCS1v15()
            if len(signature) != (material.key_size + 7) // 8:
                return False
            material.verify(signature, signing_input, pad, digest)
            return True
        if isinstance(material, ec.EllipticCurvePublicKey):
            size = _EC_COORDINATE_BYTES[alg]
            if len(signature) != 2 * size:  # JWS ECDSA signatures are R || S, fixed width (RFC 7518 §3.4)
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            if r == 0 or s == 0:
                return False
            material.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
            return True
        material.verify(signature, signing_input)
        return True
    except (InvalidSignature, ValueError):
        return False
