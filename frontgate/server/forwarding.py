"""What the upstream is told about the client: forwarding headers from the real peer (RFC 7239, X-Forwarded-*),
believing a client's own values only when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})


def client_address(peer_ip: str, xff: bytes | None, is_trusted: Callable[[str], bool]) -> str:
    """The address rate limits and logs should believe: walk X-Forwarded-For from the right past trusted
    proxies; the first untrusted hop is the client. From an untrusted peer the header means nothing."""
    if xff is None or not is_trusted(peer_ip):
        return peer_ip
    hops = [h.strip() for h in xff.decode("latin-1").split(",")]
    for hop in reversed(hops):
        if not _is_ip(hop):
            break  # garbage in the chain: stop believing it here
        if not is_trusted(hop):
            return hop
    # Every hop trusted (or garbage reached): the leftmost valid one is as far as we can see.
    for hop in hops:
        if _is_ip(hop):
            return hop
    return peer_ip


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _forwarded_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


def forwarding_headers(
    headers: list[tuple[bytes, bytes]],
    peer_ip: str,
    scheme: str,
    host: bytes | None,
    trusted: bool,
) -> list[tuple[bytes, bytes]]:
    """Return `headers` without the client's forwarding fields, plus the gateway's own.

    From a trusted proxy the chain is extended (X-Forwarded-For appended, Proto and Host kept); from anyone
    else it starts at this peer, so a client can never plant an address or scheme.
    """
    previous: dict[bytes, bytes] = {}
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name in _FORWARDING:
            if trusted:
                # Several copies of a list field are one comma-joined list (RFC 9110 §5.3).
                previous[name] = previous[name] + b", " + value if name in previous else value
        else:
            out.append((name, value))
    peer = peer_ip.encode("ascii")
    proto = scheme.encode("ascii")
    xff = previous.get(b"x-forwarded-for")
    out.append((b"x-forwarded-for", xff + b", " + peer if xff else peer))
    out.append((b"x-forwarded-proto", previous.get(b"x-forwarded-proto") or proto))
    forwarded_host = previous.get(b"x-forwarded-host") or host
    if forwarded_host:
        out.append((b"x-forwarded-host", forwarded_host))
    node = f"for={_forwarded_node(peer_ip)};proto={scheme}".encode("ascii")
    if host:
        node += b';host="' + host.replace(b"\\", b"").replace(b'"', b"") + b'"'
    earlier = previous.get(b"forwarded")
    out.append((b"forwarded", earlier + b", " + node if earlier else node))
    return out
