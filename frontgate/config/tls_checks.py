"""Config checks of the TLS settings that need the files or the whole config: every certificate, key and CA
file is readable, parses and matches (a certificate and its key), and plugins that read client certificates
sit behind a listener that asks for them. Each problem is (field path segments, message), placed at its
line by the loader."""

from __future__ import annotations

from typing import Any

from frontgate.config.schema import GatewayConfig
from frontgate.server.tls import listener_problems
from frontgate.tls.files import Segment
from frontgate.upstream.tls import upstream_problems

Problem = tuple[list[Segment], str]


def tls_problems(config: GatewayConfig) -> list[Problem]:
    problems: list[Problem] = []
    for index, listener in enumerate(config.server.listen):
        if listener.tls is not None:
            for error in listener_problems(listener.tls):
                problems.append((["server", "listen", index, "tls", *error.path], str(error)))
    for name, upstream in config.upstreams.items():
        for error in upstream_problems(upstream):
            problems.append((["upstreams", name, "tls", *error.path], str(error)))
    if not any(listener.tls is not None and listener.tls.client_ca for listener in config.server.listen):
        problems += _client_certificate_readers(config)
    return problems


def _client_certificate_readers(config: GatewayConfig) -> list[Problem]:
    """Plugins that read a client certificate, in a config where no listener asks for one."""
    why = ("needs a listener that asks for client certificates (server.listen[].tls.client_ca); "
           "without one no request ever has a certificate")
    problems: list[Problem] = []
    sections: list[tuple[list[Segment], dict[str, Any]]] = [(["plugins"], config.plugins)]
    sections += [(["routes", i, "plugins"], route.plugins) for i, route in enumerate(config.routes)]
    for path, section in sections:
        mtls = section.get("mtls")
        if isinstance(mtls, dict) and mtls.get("enabled") is not False:
            problems.append(([*path, "mtls"], f"mtls {why}"))
        allow = section.get("allow")
        if isinstance(allow, dict) and allow.get("subjects"):
            problems.append(([*path, "allow", "subjects"], f"allow.subjects {why}"))
    return problems
