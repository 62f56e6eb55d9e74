"""What the upstream is told about the client: forwarding headers from the real peer (RFC 7239 and
X-Forwarded-*), believing a client's own values only when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

FORWARDING_FIELDS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})

Fields = Sequence[tuple[bytes, bytes]]


def _joined(fields: Fields, name: bytes) -> bytes | None:
    """Several copies of a list field are one comma-joined list (RFC 9110 §5.3)."""
    values = [v for n, v in fields if n == name]
    return b", ".join(values) if values else None


def client_address(peer_ip: str, client_fields: Fields, is_trusted: Callable[[str], bool]) -> str:
    """The address rate limits and logs should believe: walk X-Forwarded-For from the right past trusted
    proxies; the first untrusted hop is the client. From an untrusted peer the header means nothing."""
    xff = _joined(client_fields, b"x-forwarded-for")
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


def forwarded_node(ip: str, scheme: str) -> bytes:
    """This hop's RFC 7239 element without the host (IPv6 addresses are quoted and bracketed)."""
    node = f'"[{ip}]"' if ":" in ip else ip
    return f"for={node};proto={scheme}".encode("ascii")


def add_forwarding_headers(
    headers: list[tuple[bytes, bytes]],
    trusted_fields: Fields,
    peer_ip: str,
    scheme: str,
    host: bytes | None,
) -> None:
    """Append the gateway's forwarding fields to `headers` (which holds none of the client's).

    `trusted_fields` are the client's own forwarding fields when the peer is a trusted proxy (else empty):
    the chain is then extended (X-Forwarded-For appended, Proto and Host kept). From anyone else it starts
    at this peer, so a client can never plant an address or a scheme.
    """
    peer = peer_ip.encode("ascii")
    xff = _joined(trusted_fields, b"x-forwarded-for")
    headers.append((b"x-forwarded-for", xff + b", " + peer if xff else peer))
    headers.append((b"x-forwarded-proto", _joined(trusted_fields, b"x-forwarded-proto") or scheme.encode("ascii")))
    forwarded_host = _joined(trusted_fields, b"x-forwarded-host") or host
    if forwarded_host:
        headers.append((b"x-forwarded-host", forwarded_host))
    node = forwarded_node(peer_ip, scheme)
    if host:
        node += b';host="' + host.replace(b"\\", b"").replace(b'"', b"") + b'"'
    earlier = _joined(trusted_fields, b"forwarded")
    headers.append((b"forwarded", earlier + b", " + node if earlier else node))
