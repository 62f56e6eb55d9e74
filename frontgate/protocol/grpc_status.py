"""gRPC statuses for what the gateway answers itself (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).

A gRPC client reads `grpc-status`, not the HTTP status, so gateway errors to it are trailers-only responses:
HTTP 200 carrying the status and a percent-encoded `grpc-message` (gRPC over HTTP/2 spec).
"""

from __future__ import annotations

from frontgate.errors import HttpError

OK, UNKNOWN, DEADLINE_EXCEEDED, PERMISSION_DENIED, RESOURCE_EXHAUSTED = 0, 2, 4, 7, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16

# The HTTP-to-gRPC mapping of gRPC's http-grpc-status-mapping document, with two sharper choices for the
# gateway's own answers (as Envoy's local replies do): a timeout is DEADLINE_EXCEEDED and a limit
# (rate or size) is RESOURCE_EXHAUSTED.
_BY_HTTP_STATUS = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    405: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    413: RESOURCE_EXHAUSTED,
    429: RESOURCE_EXHAUSTED,
    431: RESOURCE_EXHAUSTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}


# Canonical names (statuscodes.md), index = code: metrics label upstream statuses by name (bounded, readable).
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)
_STATUS_CODES = {str(code).encode(): code for code in range(len(STATUS_NAMES))}


def status_code(value: bytes) -> int:
    """An upstream's `grpc-status` value as a code; anything else is UNKNOWN, as gRPC clients read it."""
    return _STATUS_CODES.get(value.strip(), UNKNOWN)


def status_name(code: int) -> str:
    return STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else STATUS_NAMES[UNKNOWN]


def is_grpc(content_type: bytes) -> bool:
    return content_type.startswith(b"application/grpc")


def grpc_status_for(http_status: int) -> int:
    return _BY_HTTP_STATUS.get(http_status, UNKNOWN)


def percent_encode(message: str) -> bytes:
    """grpc-message encoding: printable ASCII except `%` as is, every other UTF-8 byte as %XX."""
    return b"".join(bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
                    for byte in message.encode("utf-8"))


def grpc_error_trailers(error: HttpError) -> list[tuple[bytes, bytes]]:
    """`grpc-status` and `grpc-message` for a gateway error."""
    message = percent_encode(f"{error.code}: {error.message}")
    return [(b"grpc-status", b"%d" % grpc_status_for(error.status)), (b"grpc-message", message)]
