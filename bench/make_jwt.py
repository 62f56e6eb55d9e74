"""Make the jwt benchmark leg's key and token: a fresh RSA-2048 key pair, `bench/frontgate-jwt.yaml` with
the public key inline, and `bench/jwt-token.txt` with an RS256 token valid for 10 years. The private key is
thrown away; rerun this script to make a new pair.

    .venv/bin/python bench/make_jwt.py
    BENCH_EXTRA="jwt=bench/frontgate-jwt.yaml" \\
    BENCH_HEADER="Authorization: Bearer $(cat bench/jwt-token.txt)" bash bench/run.sh

BENCH_HEADER is sent to every leg (the no-auth legs just forward it), so the legs differ only by the
plugin. Standard library and `cryptography` only; it does not import frontgate.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HERE = Path(__file__).parent
ISSUER = "https://bench.frontgate.test/"
AUDIENCE = "bench"
TEN_YEARS = 10 * 365 * 24 * 3600

CONFIG = """\
# The jwt benchmark leg: bench/frontgate.yaml plus a jwt plugin (RS256, inline public key) on the route.
# Made by bench/make_jwt.py together with bench/jwt-token.txt; see that script for how to run the leg.
version: 1

server:
  listen:
    - address: "127.0.0.1:${{FG_BENCH_PORT}}"

admin: null

observability:
  access_log: false

consumers:
  - name: bench-client

upstreams:
  origin:
    targets: ["http://127.0.0.1:${{FG_BENCH_UPSTREAM_PORT}}"]
    pool: {{max_idle: 64}}

routes:
  - name: all
    match: {{paths: [/]}}
    to: origin
    plugins:
      jwt:
        issuer: "{issuer}"
        audiences: [{audience}]
        algorithms: [RS256]
        consumer_claim: azp
        forward_claims: {{sub: X-User-Id}}
        keys:
          - |
{pem}
"""


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def main() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-user", "azp": "bench-client", "iat": now,
              "exp": now + TEN_YEARS}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    (HERE / "jwt-token.txt").write_text(f"{signing_input}.{b64(signature)}\n")
    indented = "\n".join("            " + line for line in pem.decode().strip().splitlines())
    (HERE / "frontgate-jwt.yaml").write_text(CONFIG.format(issuer=ISSUER, audience=AUDIENCE, pem=indented))
    print("wrote bench/frontgate-jwt.yaml and bench/jwt-token.txt")


if __name__ == "__main__":
    main()
