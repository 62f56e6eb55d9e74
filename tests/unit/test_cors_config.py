"""cors settings: what `frontgate validate` refuses, and which origins a list lets in."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from frontgate.plugins.cors import CorsConfig, _origin_matcher, is_preflight, requested_method


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/", "https://*.*.example.com",
                                    "https://app.*.com", "*.example.com", ""])
def test_what_is_not_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValidationError, match="is not an origin"):
        CorsConfig(origins=[origin])


def test_methods_and_header_names_must_be_tokens() -> None:
    with pytest.raises(ValidationError, match="is not a method"):
        CorsConfig(methods=["GET, POST"])
    with pytest.raises(ValidationError, match="is not a header name"):
        CorsConfig(headers=["X Trace"])
    assert CorsConfig(methods=["get"]).methods == ["GET"]


def test_origins_match_exactly_or_by_subdomain_case_insensitively() -> None:
    allowed = _origin_matcher(["https://app.example.com", "https://*.example.org", "http://localhost:3000"])
    assert allowed("https://app.example.com") and allowed("https://a.b.example.org")
    assert allowed("http://localhost:3000")
    for origin in ("https://example.org", "http://a.example.org", "https://app.example.com:8443",
                   "https://xexample.org", "http://localhost:30001", "null"):
        assert not allowed(origin)
    assert _origin_matcher(["*"])("null")


def test_a_preflight_is_options_with_origin_and_a_requested_method() -> None:
    asked = [(b"origin", b"https://a.example"), (b"access-control-request-method", b"PUT")]
    assert is_preflight("OPTIONS", asked) and requested_method(asked) == "PUT"
    assert not is_preflight("GET", asked)
    assert not is_preflight("OPTIONS", asked[:1])
    assert requested_method([(b"access-control-request-method", b"PU T")]) is None
