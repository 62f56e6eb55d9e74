"""Certificate subjects as RFC 4514 text, in one normal form for configs, client certificates and headers.

A subject is written most specific first, as `openssl x509 -noout -subject -nameopt RFC2253` prints it:
`CN=billing.internal,O=Acme,C=DE`. Normal form: attribute types in their usual upper-case short names
(`CN`, `O`, `OU`, `C`, `L`, `ST`, `DC`, `UID`, `emailAddress`; others as dotted OIDs), no spaces around
`=`, `,` or `+`, special characters escaped by RFC 4514's rules and control characters as `\\XX`. Values are
compared exactly: case, order and every attribute count.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

# cryptography renders emailAddress as its OID; configs and logs read better with the name OpenSSL prints.
_NAMES = {NameOID.EMAIL_ADDRESS: "emailAddress"}
_PARSE_NAMES = {"emailAddress": NameOID.EMAIL_ADDRESS, "E": NameOID.EMAIL_ADDRESS}
_SHORT_NAMES = ("CN", "L", "ST", "O", "OU", "C", "STREET", "DC", "UID", "emailAddress", "E")
_BY_UPPER = {name.upper(): name for name in _SHORT_NAMES}


def render_name(name: x509.Name) -> str:
    """A certificate's subject (or issuer) in the normal form."""
    text = name.rfc4514_string(_NAMES)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        # A control character in a subject must never reach a log line or a header as it is.
        text = "".join(f"\\{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    return text


def normalize_subject(text: str) -> str:
    """A subject written by a user, in the normal form; ValueError explains what is wrong with it."""
    if not text.strip():
        raise ValueError("a subject cannot be empty; write it like CN=billing.internal,O=Acme")
    parts: list[str] = []
    for separator, attribute in _split(text):
        kind, eq, value = attribute.partition("=")
        kind = kind.strip()
        if not eq or not kind:
            raise ValueError(f"invalid subject {text!r}: {attribute.strip()!r} is not TYPE=value "
                             "(write it like CN=billing.internal,O=Acme)")
        parts.append(separator + _BY_UPPER.get(kind.upper(), kind) + "=" + _strip_value(value))
    try:
        name = x509.Name.from_rfc4514_string("".join(parts), _PARSE_NAMES)
    except ValueError as exc:
        reason = str(exc) or "an unknown attribute type or a malformed value"
        raise ValueError(f"invalid subject {text!r}: {reason} (write it like CN=billing.internal,O=Acme)") from None
    return render_name(name)


def _split(text: str) -> list[tuple[str, str]]:
    """(separator before it, attribute) for each `TYPE=value`, split on unescaped `,` and `+`."""
    out: list[tuple[str, str]] = []
    separator, start, escaped = "", 0, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",+":
            out.append((separator, text[start:index]))
            separator, start = char, index + 1
    out.append((separator, text[start:]))
    return out


def _strip_value(value: str) -> str:
    """Spaces around a value are layout (RFC 2253 readers allow them); an escaped trailing space is data."""
    value = value.lstrip(" ")
    while value.endswith(" ") and not value.endswith("\\ "):
        value = value[:-1]
    return value
