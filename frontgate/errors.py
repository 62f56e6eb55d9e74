"""One exception tree. Every error the gateway itself answers knows its HTTP status and error code.

Config problems are not HTTP errors: they carry the file, line and field so `frontgate validate` can
print ``FILE:LINE:COL: path.to.field: message``.
"""

from __future__ import annotations

from dataclasses import dataclass


class FrontgateError(Exception):
    """Base of every error frontgate raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    field: str  # dotted path, e.g. routes[2].to
    message: str

    def __str__(self) -> str:
        field = f" {self.field}:" if self.field else ""
        return f"{self.file}:{self.line}:{self.column}:{field} {self.message}"


class ConfigError(FrontgateError):
    """The configuration is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class HttpError(FrontgateError):
    """An error answered to the client by the gateway itself (a "local reply")."""

    status: int = 500
    code: str = "internal_error"
    message: str = "The gateway could not handle the request."
    close_connection: bool = False

    def __init__(self, message: str | None = None, *, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if message is not None:
            self.message = message
        self.headers = headers or []
        super().__init__(self.message)


class BadRequest(HttpError):
    status, code, message = 400, "bad_request", "The request is malformed."
    close_connection = True


class NotFound(HttpError):
    status, code, message = 404, "not_found", "No route matches this request."


class MethodNotAllowed(HttpError):
    status, code, message = 405, "method_not_allowed", "The route does not accept this method."


class RequestTimeout(HttpError):
    status, code, message = 408, "request_timeout", "The request was not received in time."
    close_connection = True


class PayloadTooLarge(HttpError):
    status, code, message = 413, "payload_too_large", "The request body is larger than allowed."
    close_connection = True


class UriTooLong(HttpError):
    status, code, message = 414, "uri_too_long", "The request target is longer than allowed."
    close_connection = True


class HeadersTooLarge(HttpError):
    status, code, message = 431, "headers_too_large", "The request headers are larger than allowed."
    close_connection = True


class NotImplementedByGateway(HttpError):
    status, code, message = 501, "not_implemented", "The request uses a feature the gateway does not support."
    close_connection = True


class BadGateway(HttpError):
    status, code, message = 502, "bad_gateway", "The upstream service gave an invalid response."


class ServiceUnavailable(HttpError):
    status, code, message = 503, "upstream_unavailable", "No upstream service could take the request."


class GatewayTimeout(HttpError):
    status, code, message = 504, "gateway_timeout", "The upstream service did not answer in time."
