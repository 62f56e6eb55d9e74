"""Failures to reach an upstream, as the client sees them. Kept apart from the pool: the compiled build
(setup.py) compiles pool.py, and these subclass interpreted error classes, which native classes cannot."""

from __future__ import annotations

from frontgate.errors import BadGateway, GatewayTimeout


class UpstreamConnectError(BadGateway):
    message = "The upstream service could not be reached."


class UpstreamConnectTimeout(GatewayTimeout):
    message = "The upstream service did not accept the connection in time."
