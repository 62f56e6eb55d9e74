"""Path normalisation: no route can be reached by spelling its path differently (SPEC §3 Routing)."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from frontgate.errors import BadRequest
from frontgate.routing.normalize import (
    host_for_routing,
    normalize_path,
    parse_absolute_form,
    split_target,
)


@pytest.mark.parametrize(
    "path",
    ["/", "/orders", "/orders/7", "/orders/7/", "/v1/a-b_c~d", "/a;b=c,d/@x:y", "//double//slash"],
)
def test_plain_paths_come_back_unchanged(path: str) -> None:
    assert normalize_path(path.encode()) == path


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/a/./b/../c", "/a/c"),
        (b"/../x", "/x"),
        (b"/a/../../../x", "/x"),
        (b"/..", "/"),
        (b"/.", "/"),
        (b"/a/b/..", "/a/"),
        (b"/a/.", "/a/"),
        (b"/a/b/../../c/./d/", "/c/d/"),
        (b"/a//../b", "/a/b"),
    ],
)
def test_dot_segments_are_removed_and_never_climb_above_the_root(raw: bytes, normal: str) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        b"/orders/%2e%2e/admin",
        b"/orders/%2E%2E/admin",
        b"/orders/.%2e/admin",
        b"/orders/%2e./admin",
        b"/orders/%2e/%2e%2e/admin",
        b"/orders/7/%2e%2e/%2e%2e/admin",
    ],
)
def test_percent_encoded_dot_segments_cannot_reach_another_route(raw: bytes) -> None:
    assert normalize_path(raw) == "/admin"


@pytest.mark.parametrize(
    "path",
    ["/...", "/a/.../b", "/.hidden", "/.well-known/jwks.json", "/a/..b", "/a/b..", "/v1.2/x"],
)
def test_dots_inside_a_segment_are_not_dot_segments(path: str) -> None:
    assert normalize_path(path.encode()) == path


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/%61dmin", "/admin"),
        (b"/%41%5a%30%39", "/AZ09"),
        (b"/%7e%2d%5f%2E", "/~-_."),
        (b"/a%3ab", "/a%3Ab"),
        (b"/caf%c3%a9", "/caf%C3%A9"),
        (b"/a%20b", "/a%20b"),
        (b"/100%25", "/100%25"),
    ],
)
def test_unreserved_escapes_are_decoded_and_the_rest_get_uppercase_hex(raw: bytes, normal: str) -> None:
    assert normalize_path(raw) == normal


def test_encoded_slash_stays_encoded_and_is_not_a_separator() -> None:
    assert normalize_path(b"/files/a%2fb") == "/files/a%2Fb"
    # `..%2F..%2Fadmin` is one segment, not two dot segments: it stays under /files.
    assert normalize_path(b"/files/..%2f..%2fadmin") == "/files/..%2F..%2Fadmin"


def test_encoded_backslash_stays_encoded() -> None:
    assert normalize_path(b"/a/..%5cadmin") == "/a/..%5Cadmin"


@pytest.mark.parametrize(("raw", "normal"), [(b"/a{b}", "/a%7Bb%7D"), (b"/x|y", "/x%7Cy"), (b'/"q"', "/%22q%22")])
def test_characters_not_allowed_raw_are_percent_encoded(raw: bytes, normal: str) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        b"/a%",
        b"/a%4",
        b"/a%zz",
        b"/a%%41",
        b"/a%4g",
        b"/a%+1",
    ],
)
def test_malformed_percent_escapes_are_bad_requests(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        normalize_path(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"/a%00",
        b"/a%0d%0aSet-Cookie:x",
        b"/a%0A",
        b"/a%09",
        b"/a%7f",
        b"/a\x00b",
        b"/a\rb",
        b"/a\nb",
        b"/a\tb",
        b"/a b",
        b"/a\x7fb",
        "/caf\u00e9".encode(),
        b"/a\xffb",
    ],
)
def test_control_characters_nul_and_non_ascii_are_bad_requests(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        normalize_path(raw)


@pytest.mark.parametrize("raw", [b"/a\\..\\admin", b"\\admin", b"/a\\b"])
def test_raw_backslash_is_a_bad_request(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        normalize_path(raw)


@pytest.mark.parametrize("raw", [b"", b"a/b", b"*", b"http://x/", b"%2fadmin", b".."])
def test_a_path_must_start_with_a_slash(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        normalize_path(raw)


def test_fragment_in_the_path_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        normalize_path(b"/a#b")


def test_a_bad_path_answers_400_and_closes_the_connection() -> None:
    with pytest.raises(BadRequest) as caught:
        normalize_path(b"/a%00")
    assert caught.value.status == 400
    assert caught.value.close_connection


@pytest.mark.parametrize(
    ("target", "parts"),
    [
        (b"/a?b=1&c=2", (b"/a", b"b=1&c=2")),
        (b"/a", (b"/a", b"")),
        (b"/a?", (b"/a", b"")),
        (b"/a?x?y=/z", (b"/a", b"x?y=/z")),
    ],
)
def test_split_target_separates_path_and_query(target: bytes, parts: tuple[bytes, bytes]) -> None:
    assert split_target(target) == parts


@pytest.mark.parametrize(
    ("target", "parts"),
    [
        (b"http://Example.com:8080/p/q?x=1", (b"Example.com:8080", b"/p/q", b"x=1")),
        (b"https://api.example.com/p", (b"api.example.com", b"/p", b"")),
        (b"HTTP://api.example.com", (b"api.example.com", b"/", b"")),
        (b"http://api.example.com?x=1", (b"api.example.com", b"/", b"x=1")),
        (b"http://[::1]:8443/x", (b"[::1]:8443", b"/x", b"")),
    ],
)
def test_absolute_form_gives_authority_path_and_query(target: bytes, parts: tuple[bytes, bytes, bytes]) -> None:
    assert parse_absolute_form(target) == parts


@pytest.mark.parametrize(
    "target",
    [
        b"ftp://example.com/x",
        b"example.com/x",
        b"http:///x",
        b"http://user:pw@example.com/x",
        b"http://evil.com@good.com/x",
        b"http://exa mple.com/x",
        b"http://example.com\r\n/x",
    ],
)
def test_absolute_form_with_a_bad_scheme_or_authority_is_a_bad_request(target: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_absolute_form(target)


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        (b"Example.COM", "example.com"),
        (b"api.example.com:8080", "api.example.com"),
        (b"api.example.com.", "api.example.com"),
        (b"[::1]:8443", "[::1]"),
        (b"10.0.0.1:80", "10.0.0.1"),
        (b"", ""),
    ],
)
def test_host_for_routing_is_lowercase_without_port(authority: bytes, host: str) -> None:
    assert host_for_routing(authority) == host


# --- properties -------------------------------------------------------------------------------------------

_PIECES = [
    "a",
    "b",
    "orders",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    ".%2e",
    "%2e%2e",
    "%2E.",
    "%2F",
    "%2f",
    "%41",
    "%7e",
    "%c3%a9",
    "x.y",
    "{",
    "~",
    "",
]
segments = st.lists(st.sampled_from(_PIECES), max_size=8)
tricky_paths = segments.map(lambda parts: ("/" + "/".join(parts)).encode())


@given(tricky_paths)
def test_normalisation_is_idempotent(raw: bytes) -> None:
    once = normalize_path(raw)
    assert normalize_path(once.encode()) == once


@given(tricky_paths)
def test_normal_form_has_no_dot_segment_and_no_encoded_dot(raw: bytes) -> None:
    normal = normalize_path(raw)
    assert normal.startswith("/")
    assert "." not in normal.split("/") and ".." not in normal.split("/")
    assert "%2E" not in normal and "%2e" not in normal


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "%2e", "%2e%2e", ".%2E", "c.d"]), max_size=10))
def test_normal_form_resolves_like_a_filesystem_path_and_never_escapes_the_root(parts: list[str]) -> None:
    raw = "/" + "/".join(parts)
    normal = normalize_path(raw.encode())
    # posixpath knows nothing of %2e, so decode first; both sides then agree on where the path lands.
    assert posixpath.normpath(normal) == posixpath.normpath(unquote(raw))
    assert posixpath.normpath(normal).startswith("/")


@given(st.binary(max_size=40).map(lambda b: b"/" + b))
def test_any_bytes_give_a_clean_ascii_path_or_a_bad_request(raw: bytes) -> None:
    try:
        normal = normalize_path(raw)
    except BadRequest:
        return
    assert normal.isascii() and normal.startswith("/")
    assert not any(ch < " " or ch in '\\\x7f #"<>{}|^`[]' for ch in normal)
    assert normalize_path(normal.encode()) == normal
