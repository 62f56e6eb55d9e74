"""Why a credential was refused, and the HTTP errors the client sees.

`AuthFailure` is internal: it carries a short machine reason ("expired", "bad_signature") for metrics and the
access log. What reaches the client is one of the `HttpError`s below, with a fixed message: no token
contents, no key material, no reason that would help an attacker tune a forgery.
"""

from __future__ import annotations

from typing import Literal

from frontgate.errors import HttpError

FailureKind = Literal["missing", "invalid", "forbidden", "unavailable"]


class AuthFailure(Exception):
    """A credential was missing, bad, insufficient, or could not be checked right now."""

    def __init__(self, reason: str, kind: FailureKind = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def missing(reason: str = "missing") -> AuthFailure:
    return AuthFailure(reason, "missing")


def invalid(reason: str) -> AuthFailure:
    return AuthFailure(reason, "invalid")


def forbidden(reason: str) -> AuthFailure:
    return AuthFailure(reason, "forbidden")


def unavailable(reason: str) -> AuthFailure:
    return AuthFailure(reason, "unavailable")


class Unauthorized(HttpError):
    status, code, message = 401, "unauthorized", "A valid credential is required."


class Forbidden(HttpError):
    status, code, message = 403, "forbidden", "The credential does not allow this request."


class AuthUnavailable(HttpError):
    status, code, message = 503, "auth_unavailable", "The credential cannot be checked right now; try again."
