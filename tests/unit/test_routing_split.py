"""Weighted canaries and sticky cohorts: `to: [{upstream, weight}]` with `sticky_on`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from frontgate.routing.split import UpstreamSplit, stable_point, sticky_key_from

KEYS = [f"user-{i}".encode() for i in range(10_000)]


def no_random() -> float:
    raise AssertionError("this pick must not draw a random number")


def test_a_single_upstream_is_returned_without_any_work() -> None:
    split = UpstreamSplit([("orders", 1)], rand=no_random)
    assert split.pick(None) == "orders"
    assert split.pick(b"user-1") == "orders"


def test_an_upstream_with_weight_zero_is_never_picked() -> None:
    split = UpstreamSplit([("old", 0), ("new", 3)], rand=no_random)
    assert {split.pick(k) for k in KEYS[:500]} == {"new"}


def test_without_a_key_the_pick_is_weighted_random() -> None:
    draws = iter([0.0, 0.9499, 0.95, 0.9999999])
    split = UpstreamSplit([("v1", 95), ("v2", 5)], rand=lambda: next(draws))
    assert [split.pick(None) for _ in range(4)] == ["v1", "v1", "v2", "v2"]


def test_a_random_draw_of_almost_one_never_runs_off_the_end() -> None:
    split = UpstreamSplit([("a", 1), ("b", 2), ("c", 3)], rand=lambda: 0.9999999999999999)
    assert split.pick(None) == "c"


def test_sticky_keys_split_in_proportion_to_the_weights() -> None:
    split = UpstreamSplit([("v1", 95), ("v2", 5)])
    share = Counter(split.pick(k) for k in KEYS)["v2"] / len(KEYS)
    assert 0.035 <= share <= 0.065


def test_three_way_sticky_split_follows_the_weights() -> None:
    split = UpstreamSplit([("a", 50), ("b", 30), ("c", 20)])
    counts = Counter(split.pick(k) for k in KEYS)
    assert abs(counts["a"] / len(KEYS) - 0.5) < 0.02
    assert abs(counts["b"] / len(KEYS) - 0.3) < 0.02
    assert abs(counts["c"] / len(KEYS) - 0.2) < 0.02


def test_the_same_key_always_lands_on_the_same_side() -> None:
    first = UpstreamSplit([("v1", 95), ("v2", 5)])
    again = UpstreamSplit([("v1", 95), ("v2", 5)])
    assert [first.pick(k) for k in KEYS[:1000]] == [again.pick(k) for k in KEYS[:1000]]


def test_the_stable_hash_never_changes_across_processes_or_versions() -> None:
    # Pinned: if these move, every sticky user in production changes side on upgrade.
    assert stable_point(b"user-1", 100) == 60
    assert stable_point(b"alice", 1_000_000) == 304365
    assert stable_point(b"10.0.0.1", 100) == 32
    split = UpstreamSplit([("v1", 95), ("v2", 5)])
    assert [split.pick(f"user-{i}".encode()) for i in (21, 22, 29, 30)] == ["v1", "v2", "v2", "v1"]


def test_a_small_weight_change_moves_only_the_keys_it_has_to() -> None:
    before = UpstreamSplit([("v1", 95), ("v2", 5)])
    after = UpstreamSplit([("v1", 90), ("v2", 10)])
    moves = Counter((before.pick(k), after.pick(k)) for k in KEYS)
    assert moves[("v2", "v1")] == 0  # nobody leaves the canary
    assert 0.035 <= moves[("v1", "v2")] / len(KEYS) <= 0.065  # about the 5% that had to move


def test_adding_weight_to_the_last_upstream_only_moves_keys_towards_it() -> None:
    before = UpstreamSplit([("v1", 95), ("v2", 5)])
    after = UpstreamSplit([("v1", 95), ("v2", 10)])
    moves = Counter((before.pick(k), after.pick(k)) for k in KEYS)
    assert moves[("v2", "v1")] == 0
    assert 0.03 <= moves[("v1", "v2")] / len(KEYS) <= 0.06  # 5/100 -> 10/105: about 4.5% move


@pytest.mark.parametrize("choices", [[], [("a", 0)], [("a", 0), ("b", 0)], [("a", -1), ("b", 2)]])
def test_a_split_without_positive_weights_is_refused(choices: list[tuple[str, int]]) -> None:
    with pytest.raises(ValueError):
        UpstreamSplit(choices)


def test_repr_shows_the_weights() -> None:
    assert repr(UpstreamSplit([("v1", 95), ("v2", 5)])) == "UpstreamSplit(v1=95, v2=5)"


# --- sticky keys ----------------------------------------------------------------------------------------

HEADERS = [
    (b"x-user", b"u-42"),
    (b"cookie", b"theme=dark; session=abc123"),
    (b"cookie", b'cohort="b"'),
    (b"x-empty", b""),
]


def test_no_sticky_on_gives_no_key() -> None:
    assert sticky_key_from(None)(HEADERS, "10.0.0.1", {"sub": "x"}) is None


def test_sticky_on_ip_uses_the_client_address() -> None:
    assert sticky_key_from("ip")(HEADERS, "10.0.0.1", None) == b"10.0.0.1"


def test_sticky_on_header_is_case_insensitive_on_the_name() -> None:
    key = sticky_key_from("header:X-User")
    assert key(HEADERS, "10.0.0.1", None) == b"u-42"
    assert sticky_key_from("header:x-missing")(HEADERS, "10.0.0.1", None) is None


def test_an_empty_header_gives_no_key() -> None:
    assert sticky_key_from("header:x-empty")(HEADERS, "10.0.0.1", None) is None


def test_sticky_on_cookie_finds_it_in_any_cookie_header() -> None:
    assert sticky_key_from("cookie:session")(HEADERS, "1.1.1.1", None) == b"abc123"
    assert sticky_key_from("cookie:cohort")(HEADERS, "1.1.1.1", None) == b"b"
    assert sticky_key_from("cookie:Session")(HEADERS, "1.1.1.1", None) is None  # cookie names are exact
    assert sticky_key_from("cookie:sess")(HEADERS, "1.1.1.1", None) is None


@pytest.mark.parametrize(
    ("spec", "claims", "key"),
    [
        ("jwt.sub", {"sub": "user-7"}, b"user-7"),
        ("jwt.sub", {"sub": 7}, b"7"),
        ("jwt.org.id", {"org": {"id": "acme"}}, b"acme"),
        ("jwt.https://example.com/tenant", {"https://example.com/tenant": "acme"}, b"acme"),
        ("jwt.groups", {"groups": ["b", "a"]}, b'["b","a"]'),
        ("jwt.sub", {"other": "x"}, None),
        ("jwt.sub", {"sub": ""}, None),
        ("jwt.org.id", {"org": "flat"}, None),
        ("jwt.sub", None, None),
    ],
)
def test_sticky_on_a_jwt_claim_reads_the_claims(spec: str, claims: dict[str, Any] | None, key: bytes | None) -> None:
    assert sticky_key_from(spec)(HEADERS, "10.0.0.1", claims) == key


@pytest.mark.parametrize("spec", ["", "header:", "cookie:", "jwt.", "query:x", "IP"])
def test_an_unknown_sticky_on_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        sticky_key_from(spec)


def test_the_same_user_lands_on_the_same_side_on_every_request() -> None:
    split = UpstreamSplit([("v1", 95), ("v2", 5)])
    key = sticky_key_from("jwt.sub")
    sides = {split.pick(key([], f"10.0.0.{i}", {"sub": "user-22"})) for i in range(50)}
    assert sides == {"v2"}
