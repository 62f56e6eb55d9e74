"""The router: which route a request hits, 404 vs 405, and the explanations `frontgate routes` prints."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontgate.config.schema import Match
from frontgate.errors import MethodNotAllowed, NotFound
from frontgate.routing.router import Router, RouteRow

Headers = Sequence[tuple[bytes, bytes]]


def build(*routes: tuple[str, dict[str, Any]]) -> Router[str]:
    """A router whose payload is the route name, so a test reads which route won."""
    return Router([(name, Match(**match), name) for name, match in routes])


def hit(
    router: Router[str], path: str, method: str = "GET", host: str = "api.example.com", headers: Headers = ()
) -> str:
    return router.match(method, host, path, headers)


# --- precedence -----------------------------------------------------------------------------------------


def test_exact_path_beats_regex_beats_prefix_whatever_the_declaration_order() -> None:
    router = build(
        ("prefix", {"paths": ["/orders"]}),
        ("regex", {"regex": [r"/orders/\d+"]}),
        ("exact", {"exact": ["/orders/7"]}),
    )
    assert hit(router, "/orders/7") == "exact"
    assert hit(router, "/orders/8") == "regex"
    assert hit(router, "/orders/x") == "prefix"


def test_longest_prefix_wins_whatever_the_declaration_order() -> None:
    router = build(
        ("root", {"paths": ["/"]}),
        ("orders", {"paths": ["/orders"]}),
        ("items", {"paths": ["/orders/7/items"]}),
        ("seven", {"paths": ["/orders/7"]}),
    )
    assert hit(router, "/orders/7/items/1") == "items"
    assert hit(router, "/orders/7/notes") == "seven"
    assert hit(router, "/orders/8") == "orders"
    assert hit(router, "/catalog") == "root"


def test_first_declared_regex_wins_even_over_a_more_specific_later_one() -> None:
    router = build(
        ("broad", {"regex": [r"/items/.*"]}),
        ("narrow", {"regex": [r"/items/\d+"]}),
        ("other", {"regex": [r".*\.json"]}),
    )
    assert hit(router, "/items/42") == "broad"
    assert hit(router, "/x/y.json") == "other"


def test_first_declared_regex_wins_across_literal_and_non_literal_patterns() -> None:
    router = build(
        ("any-json", {"regex": [r"/(items|users)/.*\.json"]}),
        ("items", {"regex": [r"/items/\w+\.json"]}),
    )
    assert hit(router, "/items/a.json") == "any-json"
    reversed_router = build(
        ("items", {"regex": [r"/items/\w+\.json"]}),
        ("any-json", {"regex": [r"/(items|users)/.*\.json"]}),
    )
    assert hit(reversed_router, "/items/a.json") == "items"
    assert hit(reversed_router, "/users/a.json") == "any-json"


def test_header_condition_beats_none_on_the_same_prefix() -> None:
    router = build(
        ("payments", {"paths": ["/payments"]}),
        ("payments-acme", {"paths": ["/payments"], "headers": {"X-Tenant": "acme"}}),
    )
    assert hit(router, "/payments/1", headers=[(b"x-tenant", b"acme")]) == "payments-acme"
    assert hit(router, "/payments/1", headers=[(b"x-tenant", b"beta")]) == "payments"
    assert hit(router, "/payments/1") == "payments"


def test_a_longer_prefix_beats_a_header_condition_on_a_shorter_one() -> None:
    router = build(
        ("tenant-root", {"paths": ["/payments"], "headers": {"x-tenant": "acme"}}),
        ("refunds", {"paths": ["/payments/refunds"]}),
    )
    assert hit(router, "/payments/refunds/1", headers=[(b"x-tenant", b"acme")]) == "refunds"


def test_declaration_order_breaks_remaining_ties() -> None:
    router = build(("first", {"paths": ["/a"]}), ("second", {"paths": ["/a"]}))
    assert hit(router, "/a") == "first"


def test_a_route_that_fails_on_method_lets_a_less_specific_route_take_the_request() -> None:
    router = build(
        ("read-one", {"exact": ["/orders/7"], "methods": ["GET"]}),
        ("orders", {"paths": ["/orders"]}),
    )
    assert hit(router, "/orders/7", method="DELETE") == "orders"


# --- hosts ----------------------------------------------------------------------------------------------


def test_exact_host_beats_wildcard_beats_no_host_even_with_a_less_specific_path() -> None:
    router = build(
        ("anyhost-exact", {"exact": ["/orders"]}),
        ("wildcard-prefix", {"hosts": ["*.example.com"], "paths": ["/orders"]}),
        ("host-root", {"hosts": ["partners.example.com"], "paths": ["/"]}),
    )
    assert hit(router, "/orders", host="partners.example.com") == "host-root"
    assert hit(router, "/orders", host="api.example.com") == "wildcard-prefix"
    assert hit(router, "/orders", host="other.org") == "anyhost-exact"


def test_wildcard_matches_subdomains_at_any_depth_but_not_the_apex() -> None:
    router = build(
        ("wild", {"hosts": ["*.example.com"], "paths": ["/"]}),
        ("fallback", {"paths": ["/"]}),
    )
    assert hit(router, "/", host="a.example.com") == "wild"
    assert hit(router, "/", host="a.b.example.com") == "wild"
    assert hit(router, "/", host="example.com") == "fallback"
    assert hit(router, "/", host="badexample.com") == "fallback"
    assert hit(router, "/", host="example.com.evil.org") == "fallback"


def test_the_longest_wildcard_wins() -> None:
    router = build(
        ("broad", {"hosts": ["*.example.com"], "paths": ["/"]}),
        ("narrow", {"hosts": ["*.eu.example.com"], "paths": ["/"]}),
    )
    assert hit(router, "/", host="a.eu.example.com") == "narrow"
    assert hit(router, "/", host="a.us.example.com") == "broad"


def test_host_conditions_match_case_insensitively_from_config() -> None:
    router = build(("partners", {"hosts": ["Partners.Example.COM"], "paths": ["/"]}))
    assert hit(router, "/x", host="partners.example.com") == "partners"


def test_a_host_specific_route_that_does_not_fit_falls_back_to_routes_without_host() -> None:
    router = build(
        ("partners", {"hosts": ["partners.example.com"], "paths": ["/partner"]}),
        ("general", {"paths": ["/"]}),
    )
    assert hit(router, "/orders", host="partners.example.com") == "general"


def test_a_route_with_a_host_condition_is_never_reached_from_another_host() -> None:
    router = build(("partners", {"hosts": ["partners.example.com"], "paths": ["/"]}))
    with pytest.raises(NotFound):
        hit(router, "/", host="api.example.com")
    with pytest.raises(NotFound):
        hit(router, "/", host="")


# --- paths ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/orders", "/orders/", "/orders/7", "/orders/7/items"])
def test_prefix_matches_on_segment_boundaries(path: str) -> None:
    assert hit(build(("orders", {"paths": ["/orders"]})), path) == "orders"


@pytest.mark.parametrize("path", ["/ordersx", "/order", "/orders.json", "/x/orders"])
def test_prefix_never_matches_inside_a_segment(path: str) -> None:
    with pytest.raises(NotFound):
        hit(build(("orders", {"paths": ["/orders"]})), path)


def test_prefix_with_trailing_slash_matches_only_below_it() -> None:
    router = build(("below", {"paths": ["/orders/"]}))
    assert hit(router, "/orders/") == "below"
    assert hit(router, "/orders/7") == "below"
    with pytest.raises(NotFound):
        hit(router, "/orders")


@pytest.mark.parametrize("path", ["/", "/a", "/a/b/c", "//x"])
def test_root_prefix_matches_every_path(path: str) -> None:
    assert hit(build(("root", {"paths": ["/"]})), path) == "root"


def test_exact_path_matches_only_itself() -> None:
    router = build(("home", {"exact": ["/home"]}))
    assert hit(router, "/home") == "home"
    for path in ("/home/", "/home/x", "/homes"):
        with pytest.raises(NotFound):
            hit(router, path)


@pytest.mark.parametrize("path", ["/items/12/extra", "/x/items/12", "/items/"])
def test_regex_must_match_the_whole_path(path: str) -> None:
    with pytest.raises(NotFound):
        hit(build(("items", {"regex": [r"/items/\d+"]})), path)


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        (r"^/items/\d+$", "/items/12"),
        (r"/items/?", "/items"),
        (r"/item(s)?/\d+", "/item/3"),
        (r"/items+", "/itemsss"),
        (r"/(?i:ITEMS)/x", "/items/x"),
        (r"(?i)/ITEMS", "/items"),
        (r"/a|/b/c", "/b/c"),
        (r"/a/x|/b", "/b"),
        (r"/a/?b", "/ab"),
        (r"/a/*x", "/ax"),
        (r"/a/{0,1}x", "/ax"),
        (r".*/v2/.*", "/api/v2/x"),
        (r"/", "/"),
    ],
)
def test_regexes_of_every_shape_match_what_re_fullmatch_matches(pattern: str, path: str) -> None:
    assert re.fullmatch(pattern, path)
    assert hit(build(("r", {"regex": [pattern]})), path) == "r"


def test_configured_paths_are_normalised_like_request_paths() -> None:
    router = build(
        ("tilde", {"paths": ["/%7euser"]}),
        ("cafe", {"exact": ["/café"]}),
        ("dots", {"exact": ["/a/./b/../c"]}),
    )
    assert hit(router, "/~user/x") == "tilde"
    assert hit(router, "/caf%C3%A9") == "cafe"
    assert hit(router, "/a/c") == "dots"


def test_a_configured_path_no_request_could_have_is_refused_at_build_time() -> None:
    with pytest.raises(ValueError, match="cannot match any request"):
        build(("bad", {"paths": ["/a%zz"]}))


def test_a_route_with_several_paths_matches_any_of_them() -> None:
    router = build(("multi", {"paths": ["/a", "/b"], "exact": ["/c"], "regex": [r"/d/\d"]}))
    assert [hit(router, p) for p in ("/a/1", "/b", "/c", "/d/1")] == ["multi"] * 4


# --- headers --------------------------------------------------------------------------------------------


def test_header_condition_with_a_list_accepts_any_listed_value() -> None:
    router = build(("t", {"paths": ["/"], "headers": {"x-tenant": ["acme", "beta"]}}))
    assert hit(router, "/", headers=[(b"x-tenant", b"beta")]) == "t"


def test_header_values_are_compared_case_sensitively() -> None:
    router = build(("t", {"paths": ["/"], "headers": {"x-tenant": "acme"}}))
    with pytest.raises(NotFound):
        hit(router, "/", headers=[(b"x-tenant", b"ACME")])


def test_every_listed_header_must_be_present() -> None:
    router = build(("t", {"paths": ["/"], "headers": {"x-tenant": "acme", "x-env": "prod"}}))
    assert hit(router, "/", headers=[(b"x-env", b"prod"), (b"x-tenant", b"acme")]) == "t"
    with pytest.raises(NotFound):
        hit(router, "/", headers=[(b"x-tenant", b"acme")])


def test_a_repeated_header_with_a_second_different_value_does_not_match() -> None:
    # Otherwise `X-Tenant: acme` + `X-Tenant: beta` could reach acme's upstream carrying beta's tenant too.
    router = build(("acme", {"paths": ["/"], "headers": {"x-tenant": "acme"}}))
    assert hit(router, "/", headers=[(b"x-tenant", b"acme"), (b"x-tenant", b"acme")]) == "acme"
    with pytest.raises(NotFound):
        hit(router, "/", headers=[(b"x-tenant", b"acme"), (b"x-tenant", b"beta")])


def test_a_comma_joined_header_value_is_not_one_of_the_wanted_values() -> None:
    router = build(("acme", {"paths": ["/"], "headers": {"x-tenant": "acme"}}))
    with pytest.raises(NotFound):
        hit(router, "/", headers=[(b"x-tenant", b"acme, beta")])


# --- 404 and 405 ----------------------------------------------------------------------------------------


def test_no_matching_path_is_404() -> None:
    with pytest.raises(NotFound) as caught:
        hit(build(("orders", {"paths": ["/orders"]})), "/catalog")
    assert caught.value.status == 404


def test_an_empty_router_answers_404() -> None:
    with pytest.raises(NotFound):
        hit(Router[str]([]), "/")


def test_matching_path_with_wrong_method_is_405_with_a_sorted_deduplicated_allow() -> None:
    router = build(
        ("read", {"paths": ["/orders"], "methods": ["GET", "POST"]}),
        ("write", {"exact": ["/orders/7"], "methods": ["PUT", "POST"]}),
        ("elsewhere", {"paths": ["/catalog"], "methods": ["DELETE"]}),
    )
    with pytest.raises(MethodNotAllowed) as caught:
        hit(router, "/orders/7", method="PATCH")
    assert caught.value.status == 405
    assert caught.value.headers == [(b"allow", b"GET, HEAD, POST, PUT")]


def test_head_is_allowed_wherever_get_is() -> None:
    router = build(("read", {"paths": ["/orders"], "methods": ["GET"]}))
    assert hit(router, "/orders", method="HEAD") == "read"
    with pytest.raises(MethodNotAllowed) as caught:
        hit(router, "/orders", method="POST")
    assert caught.value.headers == [(b"allow", b"GET, HEAD")]


def test_empty_methods_accept_any_method() -> None:
    router = build(("any", {"paths": ["/"]}))
    assert {hit(router, "/", method=m) for m in ("GET", "PATCH", "PROPFIND", "OPTIONS")} == {"any"}


def test_methods_are_case_sensitive() -> None:
    with pytest.raises(MethodNotAllowed):
        hit(build(("read", {"paths": ["/"], "methods": ["GET"]})), "/", method="get")


def test_a_route_failing_on_headers_gives_404_not_405() -> None:
    router = build(("acme", {"paths": ["/payments"], "headers": {"x-tenant": "acme"}, "methods": ["GET"]}))
    with pytest.raises(NotFound):
        hit(router, "/payments", method="POST", headers=[(b"x-tenant", b"beta")])
    with pytest.raises(MethodNotAllowed):
        hit(router, "/payments", method="POST", headers=[(b"x-tenant", b"acme")])


def test_a_route_on_another_host_does_not_turn_404_into_405() -> None:
    router = build(("partners", {"hosts": ["partners.example.com"], "paths": ["/"], "methods": ["GET"]}))
    with pytest.raises(NotFound):
        hit(router, "/", method="POST", host="api.example.com")


def test_allow_collects_methods_across_host_buckets() -> None:
    router = build(
        ("host", {"hosts": ["api.example.com"], "paths": ["/x"], "methods": ["PUT"]}),
        ("wild", {"hosts": ["*.example.com"], "paths": ["/x"], "methods": ["DELETE"]}),
        ("any", {"paths": ["/x"], "methods": ["POST"]}),
    )
    with pytest.raises(MethodNotAllowed) as caught:
        hit(router, "/x", method="PATCH", host="api.example.com")
    assert caught.value.headers == [(b"allow", b"DELETE, POST, PUT")]


# --- explain and table ----------------------------------------------------------------------------------


def spec_router() -> Router[str]:
    return build(
        ("orders", {"paths": ["/orders"], "methods": ["GET", "POST"]}),
        ("payments-acme", {"paths": ["/payments"], "headers": {"x-tenant": "acme"}}),
        ("partners", {"hosts": ["partners.example.com"], "paths": ["/"]}),
        ("home", {"exact": ["/home"], "methods": ["GET"]}),
        ("catch-all", {"paths": ["/"]}),
    )


def test_explain_names_the_winner_and_why_every_other_route_was_passed_over() -> None:
    lines = dict(spec_router().explain("GET", "api.example.com", "/home", []))
    assert lines == {
        "partners": "host does not match",
        "home": "MATCH: exact path /home",
        "orders": "path does not match",
        "payments-acme": "path does not match",
        "catch-all": "matches too (prefix /), but home comes first",
    }


def test_explain_lists_routes_in_the_order_the_router_tries_them() -> None:
    names = [name for name, _ in spec_router().explain("GET", "partners.example.com", "/orders", [])]
    # host first, then exact before prefix, then the longer prefix (/payments) before the shorter (/orders)
    assert names == ["partners", "home", "payments-acme", "orders", "catch-all"]


def test_explain_says_which_header_value_was_wrong() -> None:
    lines = dict(spec_router().explain("GET", "api.example.com", "/payments", [(b"x-tenant", b"beta")]))
    assert lines["payments-acme"] == "header x-tenant is 'beta', wants 'acme'"
    lines = dict(spec_router().explain("GET", "api.example.com", "/payments", []))
    assert lines["payments-acme"] == "header x-tenant is missing, wants 'acme'"


def test_explain_lists_the_wanted_values_of_a_header_with_several() -> None:
    router = build(("t", {"paths": ["/"], "headers": {"x-tenant": ["beta", "acme"]}}))
    assert router.explain("GET", "h", "/", [(b"x-tenant", b"gamma")]) == [
        ("t", "header x-tenant is 'gamma', wants one of 'acme', 'beta'")
    ]


def test_explain_says_which_method_was_wrong() -> None:
    lines = dict(spec_router().explain("PATCH", "api.example.com", "/orders/1", []))
    assert lines["orders"] == "method PATCH not in GET, POST"
    assert lines["catch-all"] == "MATCH: prefix /"


def test_explain_shows_the_host_condition_of_the_winner() -> None:
    lines = dict(spec_router().explain("GET", "partners.example.com", "/x", []))
    assert lines["partners"] == "MATCH: host partners.example.com, prefix /"


def test_repr_shows_the_size_of_the_compiled_table() -> None:
    assert repr(spec_router()) == "Router(5 routes, 5 candidates, 1 hosts, 0 wildcards)"


def test_table_rows_come_in_precedence_order_one_per_host_and_pattern() -> None:
    router = build(
        ("orders", {"paths": ["/orders"], "methods": ["GET", "POST"]}),
        ("multi", {"exact": ["/home"], "regex": [r"/r/\d+"]}),
        ("acme", {"paths": ["/orders"], "headers": {"x-tenant": ["acme", "beta"]}}),
        ("partners", {"hosts": ["partners.example.com", "*.partners.example.com"], "paths": ["/"]}),
    )
    assert router.table() == [
        RouteRow("partners", "partners.example.com", "prefix", "/", "*", ""),
        RouteRow("partners", "*.partners.example.com", "prefix", "/", "*", ""),
        RouteRow("multi", "*", "exact", "/home", "*", ""),
        RouteRow("multi", "*", "regex", r"/r/\d+", "*", ""),
        RouteRow("acme", "*", "prefix", "/orders", "*", "x-tenant=acme|beta"),
        RouteRow("orders", "*", "prefix", "/orders", "GET, POST", ""),
    ]


# --- the compiled tables agree with a plain reading of the rules ----------------------------------------


def reference_match(
    entries: Sequence[tuple[str, Match, str]], method: str, host: str, path: str, headers: Headers
) -> str:
    """The precedence rules written as plainly as possible: sort every fitting (route, host, pattern)."""
    fitting = []
    for index, (name, match, _payload) in enumerate(entries):
        patterns = [(0, p) for p in match.exact] + [(1, p) for p in match.regex] + [(2, p) for p in match.paths]
        hosts: list[str | None] = [*match.hosts] or [None]
        for want_host in hosts:
            if want_host is None:
                host_key: tuple[int, int] = (2, 0)
            elif want_host.startswith("*."):
                if not (host.endswith(want_host[1:]) and len(host) > len(want_host) - 1):
                    continue
                host_key = (1, -len(want_host))
            elif host == want_host:
                host_key = (0, 0)
            else:
                continue
            for pattern_index, (kind, pattern) in enumerate(patterns):
                if kind == 0:
                    fits, within = path == pattern, (0, 0)
                elif kind == 1:
                    fits, within = re.fullmatch(pattern, path) is not None, (index, pattern_index)
                else:
                    boundary = pattern.endswith("/") or path == pattern or path.startswith(pattern + "/")
                    fits, within = path.startswith(pattern) and boundary, (-len(pattern), 0)
                if not fits or not all(
                    any(n == hn.encode() for n, _ in headers)
                    and all(v.decode() in ([w] if isinstance(w, str) else w) for n, v in headers if n == hn.encode())
                    for hn, w in match.headers.items()
                ):
                    continue
                header_rank = 0 if match.headers else 1
                key = (*host_key, kind, *within, header_rank, index, pattern_index)
                fitting.append((key, name, match.methods))
    allowed: set[str] = set()
    for _key, name, methods in sorted(fitting):
        expanded = set(methods) | ({"HEAD"} if "GET" in methods else set())
        if not methods or method in expanded:
            return name
        allowed |= expanded
    return f"405 {', '.join(sorted(allowed))}" if allowed else "404"


def outcome(router: Router[str], method: str, host: str, path: str, headers: Headers) -> str:
    try:
        return router.match(method, host, path, headers)
    except MethodNotAllowed as exc:
        return f"405 {exc.headers[0][1].decode()}"
    except NotFound:
        return "404"


match_specs = st.fixed_dictionaries(
    {
        "paths": st.lists(st.sampled_from(["/", "/a", "/a/", "/a/b", "/ab", "/b", "//a"]), max_size=2),
        "exact": st.lists(st.sampled_from(["/a", "/a/b", "/b/", "/"]), max_size=1),
        "regex": st.lists(
            st.sampled_from([r"/a/\d+", r"/a/.*", r"/(a|b)", r".*b", r"/a", r"/a/?", r"/ab?", r"/a/?b", r"/a/1|/b"]),
            max_size=1,
        ),
        "hosts": st.sampled_from([[], ["x.com"], ["*.x.com"], ["*.y.x.com"], ["x.com", "*.x.com"]]),
        "methods": st.sampled_from([[], ["GET"], ["POST"], ["GET", "PUT"]]),
        "headers": st.sampled_from([{}, {"t": "1"}, {"t": ["1", "2"]}]),
    }
).filter(lambda m: m["paths"] or m["exact"] or m["regex"])

requests = st.tuples(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]),
    st.sampled_from(["x.com", "a.x.com", "a.y.x.com", "y.x.com", "other.com"]),
    st.sampled_from(["/", "/a", "/a/", "/a/1", "/a/b", "/ab", "/abc", "/b", "/b/", "/a/b/c", "//a", "/c"]),
    st.sampled_from([[], [(b"t", b"1")], [(b"t", b"2")], [(b"t", b"1"), (b"t", b"3")]]),
)


@settings(max_examples=200)
@given(st.lists(match_specs, min_size=1, max_size=6), st.lists(requests, min_size=1, max_size=8))
def test_router_agrees_with_the_plain_rules_and_explain_names_the_same_winner(
    specs: list[dict[str, Any]], reqs: list[tuple[str, str, str, Headers]]
) -> None:
    entries = [(f"r{i}", Match(**spec), f"r{i}") for i, spec in enumerate(specs)]
    router = Router(entries)
    for method, host, path, headers in reqs:
        got = outcome(router, method, host, path, headers)
        assert got == reference_match(entries, method, host, path, headers)
        winners = [name for name, why in router.explain(method, host, path, headers) if why.startswith("MATCH")]
        assert winners == ([got] if got[:3] not in ("404", "405") else [])
