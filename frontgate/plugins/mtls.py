"""mtls: the verified client certificate (mutual TLS) names a consumer.

    server:
      listen:
        - address: "0.0.0.0:8443"
          tls: {certificates: [...], client_ca: tls/clients-ca.pem, client_cert: optional}
    consumers:
      - {name: billing-service, groups: [internal], mtls_subjects: ["CN=billing.internal,O=Acme"]}
    routes:
      - ...
        plugins:
          mtls: {}

The certificate was verified against `client_ca` by the handshake; this plugin only maps its subject (RFC
4514, normalized: see frontgate/tls/subjects.py) to the consumer whose `mtls_subjects` lists it, exactly.
No certificate, or one no consumer lists: 401. Like the other authenticators it sets the consumer for
`allow`, rate-limit keys, `X-Consumer` and the access log, and it can be one of a route's `auth_any`.
"""

from __future__ import annotations

from frontgate.auth.chain import Identity
from frontgate.auth.errors import AuthFailure, invalid, missing
from frontgate.pipeline.context import RequestContext
from frontgate.plugins.auth_base import AuthPlugin


class MtlsPlugin(AuthPlugin):
    name = "mtls"
    priority = 1150  # before the token checks: a certificate costs a dict lookup, a token a signature check
    scheme = b"ClientCertificate"  # no registered scheme exists for "present a TLS client certificate"

    def challenge(self, failure: AuthFailure) -> bytes:
        if failure.kind == "missing":
            return self.scheme
        return self.scheme + b' error="unknown_subject"'

    def authenticate_now(self, ctx: RequestContext) -> Identity:
        cert = ctx.client_cert
        if cert is None:
            raise missing("no_client_certificate")
        consumer = self.consumers.by_mtls_subject(cert.subject)
        if consumer is None:
            raise invalid("unknown_subject")
        return Identity(consumer)
