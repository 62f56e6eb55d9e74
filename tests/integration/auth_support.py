"""Shared checks for the auth integration tests: what a refused client sees, and that nothing got through."""

from __future__ import annotations

import httpx

from tests.integration.helpers import RecordingUpstream, RunningGateway


def get(gateway: RunningGateway, path: str, token: str | None = None, **headers: str) -> httpx.Response:
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    return httpx.get(gateway.url(path), headers=sent, timeout=10)


def assert_refused(response: httpx.Response, upstream: RecordingUpstream, before: int, status: int = 401,
                   challenge: str | None = 'Bearer error="invalid_token"', secret: str | None = None) -> None:
    """The gateway answered itself with the SPEC error body, the right challenge, no secret in the body, and
    the upstream saw nothing new."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["error"] == {401: "unauthorized", 403: "forbidden", 503: "auth_unavailable"}[status]
    if challenge is not None:
        assert challenge in response.headers.get_list("www-authenticate")
    if secret is not None:
        for piece in secret.split("."):
            if len(piece) > 8:
                assert piece not in response.text
    assert len(upstream.requests) == before, "a refused request reached the upstream"
