"""A test identity provider: real keys (RSA, EC P-256, Ed25519, HMAC) made with `cryptography`, a JWS signer
written for the tests (it signs whatever it is told to, including the malformed and hostile tokens an
attacker would send), a JWKS server whose keys can rotate and which can go down, an RFC 7662 introspection
endpoint, and a listener that only counts connections (for `jku`: the gateway must never connect).

The servers are real HTTP servers on 127.0.0.1 with free ports, each on its own thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_HASH: dict[str, Any] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_RSA_CACHE: list[rsa.RSAPrivateKey] = []


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def _int_b64(value: int, length: int | None = None) -> str:
    length = length or (value.bit_length() + 7) // 8
    return b64(value.to_bytes(length, "big"))


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Signer:
    """A private key, its kid, and the algorithm it signs with."""

    alg: str
    key: Any  # a cryptography private key, or bytes for HMAC
    kid: str | None = None

    @classmethod
    def rsa(cls, kid: str | None = "rsa-1", alg: str = "RS256") -> Signer:
        return cls(alg, new_rsa_key(), kid)

    @classmethod
    def ec(cls, kid: str | None = "ec-1") -> Signer:
        return cls("ES256", ec.generate_private_key(ec.SECP256R1()), kid)

    @classmethod
    def ed25519(cls, kid: str | None = "ed-1") -> Signer:
        return cls("EdDSA", ed25519.Ed25519PrivateKey.generate(), kid)

    @classmethod
    def hmac(cls, secret: bytes, kid: str | None = None, alg: str = "HS256") -> Signer:
        return cls(alg, secret, kid)

    def public_jwk(self) -> dict[str, Any]:
        key = self.key
        jwk: dict[str, Any]
        if isinstance(key, rsa.RSAPrivateKey):
            numbers = key.public_key().public_numbers()
            jwk = {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            numbers_ec = key.public_key().public_numbers()
            jwk = {"kty": "EC", "crv": "P-256", "x": _int_b64(numbers_ec.x, 32), "y": _int_b64(numbers_ec.y, 32)}
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        else:
            jwk = {"kty": "oct", "k": b64(key)}
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk

    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def signature(self, signing_input: bytes, alg: str | None = None) -> bytes:
        return sign_bytes(alg or self.alg, self.key, signing_input)

    def token(self, claims: dict[str, Any] | bytes, *, alg: str | None = None, **header: Any) -> str:
        """A compact JWS; header members given as keyword arguments (`kid=None` drops the kid)."""
        head: dict[str, Any] = {"alg": alg or self.alg, "typ": "JWT"}
        if self.kid is not None:
            head["kid"] = self.kid
        head.update(header)
        head = {k: v for k, v in head.items() if v is not None}
        payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
        signing_input = f"{b64json(head)}.{b64(payload)}"
        return f"{signing_input}.{b64(self.signature(signing_input.encode(), alg))}"


def sign_bytes(alg: str, key: Any, data: bytes) -> bytes:
    if alg.startswith("HS"):
        return hmac.new(key, data, getattr(hashlib, "sha" + alg[2:])).digest()
    if alg.startswith("RS"):
        return key.sign(data, padding.PKCS1v15(), _HASH[alg[2:]]())  # type: ignore[no-any-return]
    if alg.startswith("PS"):
        digest = _HASH[alg[2:]]()
        return key.sign(data, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)  # type: ignore[no-any-return]
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(_HASH[alg[2:]]())))
        size = {"256": 32, "384": 48, "512": 66}[alg[2:]]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return key.sign(data)  # type: ignore[no-any-return]


def claims(issuer: str = "https://idp.test/", audience: str | list[str] = "api.test", lifetime: float = 300,
           **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": "user-7", "iat": now, "exp": now + lifetime}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


# --- servers ------------------------------------------------------------------------------------------


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _JwksHandler(_Quiet):
    def do_GET(self) -> None:
        owner: JwksServer = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.requests += 1
            down = owner.down
            document = {"keys": [s.public_jwk() for s in owner.signers]}
        if down:
            self._send(503, b'{"error":"down"}')
        else:
            self._send(200, json.dumps(document).encode())


class JwksServer(_Server):
    """Serves the public keys of `signers` at /jwks; `rotate()` replaces them, `down = True` answers 503."""

    def __init__(self, signers: list[Signer]) -> None:
        self.signers = list(signers)
        self.requests = 0
        self.down = False
        self.lock = threading.Lock()
        super().__init__(_JwksHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def rotate(self, signers: list[Signer]) -> None:
        with self.lock:
            self.signers = list(signers)


@dataclass
class IntrospectionCall:
    authorization: str | None
    form: dict[str, str]


class _IntrospectionHandler(_Quiet):
    def do_POST(self) -> None:
        owner: IntrospectionServer = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("content-length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        auth = self.headers.get("authorization")
        with owner.lock:
            owner.calls.append(IntrospectionCall(auth, form))
            down = owner.down
            answer = owner.tokens.get(form.get("token", ""), {"active": False})
        if down:
            self._send(500, b"{}")
            return
        expected = "Basic " + base64.b64encode(f"{owner.client_id}:{owner.client_secret}".encode()).decode()
        if auth != expected:
            self._send(401, b'{"error":"invalid_client"}')
            return
        self._send(200, json.dumps(answer).encode())


@dataclass
class IntrospectionServer(_Server):
    """An RFC 7662 endpoint at /introspect: `tokens` maps a token to its answer; others are inactive."""

    client_id: str = "gateway"
    client_secret: str = "s3cret-of-the-gateway"
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[IntrospectionCall] = field(default_factory=list)
    down: bool = False

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        super().__init__(_IntrospectionHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect"


class ConnectionCounter:
    """A listener that accepts and counts connections and never answers: where `jku` points."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self._sock.close()
