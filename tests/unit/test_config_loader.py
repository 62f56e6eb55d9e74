"""The config loader: env substitution, YAML 1.2, several files, located problems, plugins, cross-checks.

Every problem is asserted as the user sees it, `FILE:LINE:COL: field.path: message`. Field paths name
list items by index (`routes[1].to`), whatever the item's name.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from frontgate.config.envsubst import substitute
from frontgate.config.loader import LoadedConfig, load_config
from frontgate.config.locations import format_path, parse_path
from frontgate.config.schema import Duration, Size
from frontgate.errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"


# --- plugin models as plugin modules declare them (extra=forbid, an `enabled` switch) ------------------


class _PluginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True


class JwtConfig(_PluginConfig):
    issuer: str
    clock_skew: Duration = 60.0


class CorsConfig(_PluginConfig):
    origins: list[str]
    max_age: Duration = 600.0


class RequestIdConfig(_PluginConfig):
    header: str = "X-Request-Id"


class BodyLimitConfig(_PluginConfig):
    value: Size


class RewriteConfig(_PluginConfig):
    prefix: str | None = None
    strip_prefix: bool = False


PLUGINS: dict[str, type[BaseModel]] = {
    "jwt": JwtConfig,
    "cors": CorsConfig,
    "request_id": RequestIdConfig,
    "body_limit": BodyLimitConfig,
    "rewrite": RewriteConfig,
}

HEAD = """\
version: 1
upstreams:
  orders: {targets: ["http://10.0.0.1:8080"]}
  payments: {targets: ["http://10.0.0.2:8080"]}
"""  # four lines: tests that append to it count their lines from 5


def write(tmp_path: Path, name: str, text: str, *, head: bool = False) -> str:
    """Write a config file; with `head`, after the four lines of HEAD."""
    path = tmp_path / name
    path.write_text((HEAD if head else "") + textwrap.dedent(text))
    return str(path)


def load(paths: list[str], environ: dict[str, str] | None = None, **kwargs: Any) -> LoadedConfig:
    return load_config(paths, environ={} if environ is None else environ, **kwargs)


def problems(paths: list[str], environ: dict[str, str] | None = None, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(paths, environ, **kwargs)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(p) for p in caught.value.problems]


# --- a whole valid file -------------------------------------------------------------------------------


def test_spec_shaped_config_loads_with_units_anchors_and_plugin_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIGS)  # its certificate files (tls/*.pem) are named relative to the directory
    loaded = load([str(CONFIGS / "gateway.yaml")], plugin_models=PLUGINS)
    config = loaded.config
    assert config.server.limits.max_header_bytes == 16 * 1024
    assert config.server.timeouts.read_header == 10.0
    assert config.upstreams["orders-v2"].pool.max_idle == 64  # from the `*pool` alias
    assert [r.name for r in config.routes] == ["orders", "payments-acme", "home"]
    assert config.routes[0].timeout == 2.0
    assert config.routes[1].match.headers == {"x-tenant": "acme", "x-beta": "on"}
    assert loaded.global_plugins == {
        "request_id": RequestIdConfig(header="X-Request-Id"),
        "cors": CorsConfig(origins=["https://app.example.com"], max_age=600.0),
    }
    jwt = JwtConfig(issuer="https://auth.example.com/", clock_skew=60.0)
    assert loaded.route_plugins == [
        {"jwt": jwt},
        {"body_limit": BodyLimitConfig(value=256 * 1024), "cors": None},
        {"jwt": jwt},
    ]
    assert loaded.sources == [str(CONFIGS / "gateway.yaml")]


def test_locate_finds_where_a_field_was_written_for_later_semantic_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIGS)
    path = str(CONFIGS / "gateway.yaml")
    loaded = load([path], plugin_models=PLUGINS)
    assert loaded.locate("routes[1].to") == (path, 54, 9)
    assert loaded.locate("routes[0].to[1].upstream") == (path, 44, 20)
    assert loaded.locate("routes[1].match.headers.x-tenant") == (path, 53, 53)
    # A default that is not in the file: the nearest parent that is.
    assert loaded.locate("routes[1].match.regex") == (path, 53, 12)
    problem = loaded.problem("routes[1].match.paths[0]", "shadowed by route 'orders'")
    assert str(problem) == f"{path}:53:21: routes[1].match.paths[0]: shadowed by route 'orders'"


# --- reporting ----------------------------------------------------------------------------------------


def test_problem_is_printed_as_file_line_column_field_message(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        routes:
          - name: orders
            match: {paths: [/orders]}
            to: orders
            tiemout: 2s
        """, head=True)
    assert problems([path]) == [f"{path}:9:5: routes[0].tiemout: unknown field 'tiemout'; did you mean 'timeout'?"]


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        server:
          workers: 0
          limits: {max_body_bytes: lots}
        upstreams:
          orders: {targets: ["ftp://10.0.0.1"], balance: fastest}
        routes:
          - name: orders
            match: {paths: [orders]}
            to: orders
        """)
    assert problems([path]) == [
        f"{path}:3:12: server.workers: workers must be at least 1 (or auto)",
        f"{path}:4:28: server.limits.max_body_bytes: invalid size 'lots': expected bytes or a number with a unit: "
        "16KiB, 10MiB",
        f"{path}:6:22: upstreams.orders.targets[0]: invalid target 'ftp://10.0.0.1': expected http://HOST:PORT or "
        "https://HOST:PORT",
        f"{path}:6:50: upstreams.orders.balance: expected 'round_robin', 'random', 'least_request' or 'hash' "
        "(got 'fastest')",
        f"{path}:9:21: routes[0].match.paths[0]: path 'orders' must start with /",
    ]


def test_problems_from_several_files_come_in_file_then_line_order(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", """\
        version: 1
        admin: {listen: nowhere}
        server: {workers: none}
        """)
    second = write(tmp_path, "b.yaml", "server: {pid_fil: x}\n")
    assert [p.split(": ")[1] for p in problems([first, second])] == [
        "admin.listen",
        "server.workers",
        "server.pid_fil",
    ]


def test_missing_file_is_a_problem_at_line_zero_and_other_files_are_still_checked(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    broken = write(tmp_path, "broken.yaml", "version: [1\n")
    assert problems([missing, broken]) == [
        f"{missing}:0:0: cannot read file: No such file or directory",
        f"{broken}:2:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 1)",
    ]


def test_no_file_at_all_is_a_problem() -> None:
    with pytest.raises(ConfigError, match="no configuration file given"):
        load([])


# --- environment substitution -------------------------------------------------------------------------


def test_env_vars_and_defaults_are_substituted_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        admin: {listen: "${ADMIN_HOST:-127.0.0.1}:${ADMIN_PORT}"}
        server:
          workers: ${WORKERS:-auto}
          timeouts: {idle: "${IDLE:-90s}"}
        """)
    config = load([path], {"ADMIN_PORT": "9902", "IDLE": ""}).config
    assert config.admin is not None and config.admin.listen == "127.0.0.1:9902"
    assert config.server.workers == "auto"
    assert config.server.timeouts.idle == 90.0  # `:-` also covers a variable set but empty


def test_unset_env_var_without_default_is_reported_at_its_own_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        upstreams:
          auth: {targets: ["https://${AUTH_HOST}:8443"]}
          users: {targets: ["http://${USERS_HOST}"], balance: ${BALANCE}}
        """)
    assert problems([path], {"AUTH_HOST": "auth.internal"}) == [
        f"{path}:4:29: environment variable USERS_HOST is not set (use ${{USERS_HOST:-default}} to give a default)",
        f"{path}:4:55: environment variable BALANCE is not set (use ${{BALANCE:-default}} to give a default)",
    ]


def test_columns_after_a_substitution_point_into_the_original_line(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        server: {workers: "${WORKERS}", trusted_proxies: [10.0.0.0/8, not-a-network]}
        """)
    assert problems([path], {"WORKERS": "12345678901234567890-long-value"}) == [
        f"{path}:2:19: server.workers: expected a whole number or 'auto' (got '12345678901234567890-long-value')",
        f"{path}:2:63: server.trusted_proxies[1]: invalid network 'not-a-network': expected an IP address or "
        "CIDR such as 10.0.0.0/8",
    ]


def test_double_dollar_escapes_a_literal_dollar_brace(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        routes:
          - name: templated
            match: {regex: ["^/t/$${id}/x$$"]}
            to: orders
        """, head=True)
    assert load([path]).config.routes[0].match.regex == ["^/t/${id}/x$$"]


def test_commented_out_variables_are_not_substituted(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        # admin: {listen: "${OLD_ADMIN}"}
        server: {workers: auto}   # was ${WORKERS}
        """)
    assert load([path]).config.server.workers == "auto"


def test_malformed_substitutions_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", 'version: 1\nadmin: {listen: "${1PORT}"}\nserver:\n  pid_file: /run/${PID\n')
    assert problems([path]) == [
        f"{path}:2:18: invalid substitution '${{1PORT}}': expected ${{NAME}} or ${{NAME:-default}} "
        "(write $${ for a literal ${)",
        f"{path}:4:18: unterminated '${{': expected ${{NAME}} or ${{NAME:-default}}",
    ]


def test_env_value_with_a_line_break_is_refused_so_line_numbers_stay_true(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", 'version: 1\nadmin: {listen: "${ADMIN}"}\n')
    assert problems([path], {"ADMIN": "127.0.0.1:1\nversion: 2"}) == [
        f"{path}:2:18: environment variable ADMIN contains a line break; put multi-line values in a file and "
        "reference its path",
    ]


def test_column_map_points_every_character_after_a_substitution_back_to_its_source() -> None:
    text, columns, found = substitute("a: ${X}-${Y:-dflt} # ${Z}\n", {"X": "longer-value"})
    assert found == []
    assert text == "a: longer-value-dflt # ${Z}\n"
    assert columns.source_column(0, text.index("-dflt")) == 7  # the `-` between the two substitutions
    assert columns.source_column(0, text.index("#")) == 19
    assert columns.source_column(0, text.index("value")) == 3  # inside a value: its `${`


def test_a_hash_inside_quotes_or_words_does_not_start_a_comment() -> None:
    source = 'secret: "a #b ${X}"  # ${Y}\nurl: http://h/#${X} # ${Z}\nnote: don\'t # ${Z}\n'
    text, _, found = substitute(source, {"X": "x"})
    assert found == []
    assert text == 'secret: "a #b x"  # ${Y}\nurl: http://h/#x # ${Z}\nnote: don\'t # ${Z}\n'


_NO_DOLLAR_OR_BREAK = st.text(
    st.characters(codec="utf-8", exclude_characters="$#\n\r\x85\u2028\u2029"), max_size=6
)


@given(st.lists(st.tuples(_NO_DOLLAR_OR_BREAK, _NO_DOLLAR_OR_BREAK), max_size=5))
def test_column_map_sends_every_character_the_user_wrote_back_to_its_column(pieces: list[tuple[str, str]]) -> None:
    environ = {f"V{i}": value for i, (_, value) in enumerate(pieces)}
    source = "".join(f"{literal}${{V{i}}}" for i, (literal, _) in enumerate(pieces))
    text, columns, found = substitute(source, environ)
    assert found == []
    out = 0
    for literal, value in pieces:
        for char in literal:
            assert text[out] == char == source[columns.source_column(0, out)]
            out += 1
        assert text[out : out + len(value)] == value
        out += len(value)


# --- YAML ---------------------------------------------------------------------------------------------


def test_on_off_yes_no_stay_strings_as_in_yaml_1_2(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        routes:
          - name: flags
            match: {paths: [/], headers: {x-a: on, x-b: off, x-c: yes, x-d: no}}
            to: orders
            on: yes
        """, head=True)
    [problem] = problems([path])
    assert problem.startswith(f"{path}:9:5: routes[0].on: unknown field 'on' (expected one of: name, match, to, ")
    path = write(tmp_path, "ok.yaml", Path(path).read_text().replace("    on: yes\n", ""))
    headers = load([path]).config.routes[0].match.headers
    assert headers == {"x-a": "on", "x-b": "off", "x-c": "yes", "x-d": "no"}


def test_a_yaml_1_1_directive_is_refused_rather_than_reading_on_as_true(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", "%YAML 1.1\n---\nversion: 1\n")
    assert problems([path]) == [f"{path}:1:1: frontgate reads YAML 1.2 only; remove the '%YAML 1.1' directive"]


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        server:
          workers: 4
           limits: {}
        """)
    assert problems([path]) == [f"{path}:4:10: invalid YAML: mapping values are not allowed here"]


def test_every_duplicate_key_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        server:
          workers: 4
          workers: 8
        admin: {listen: "127.0.0.1:9901", listen: "127.0.0.1:9902"}
        """)
    assert problems([path]) == [
        f"{path}:4:3: duplicate key 'workers' (first at line 3)",
        f"{path}:5:35: duplicate key 'listen' (first at line 5)",
    ]


def test_anchors_aliases_and_merge_keys_reuse_blocks(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        upstreams:
          orders: &backend
            targets: ["http://10.0.0.1:8080"]
            pool: {max_idle: 8}
          orders-canary:
            <<: *backend
            targets: ["http://10.0.0.9:8080"]
          payments:
            <<: [*backend]
            balance: random
        """)
    upstreams = load([path]).config.upstreams
    assert upstreams["orders-canary"].targets == ["http://10.0.0.9:8080"]
    assert upstreams["orders-canary"].pool.max_idle == 8
    assert upstreams["payments"].balance == "random"
    assert upstreams["payments"].targets == ["http://10.0.0.1:8080"]


def test_a_mistake_inside_an_anchored_block_is_reported_once_at_the_anchor(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        upstreams:
          orders:
            targets: ["http://10.0.0.1:8080"]
            pool: &pool {max_idle: -1}
          payments:
            targets: ["http://10.0.0.2:8080"]
            pool: *pool
        """)
    assert problems([path]) == [f"{path}:5:28: upstreams.orders.pool.max_idle: must be at least 0"]


def test_a_control_character_is_reported_where_it_sits(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", 'version: 1\nadmin: {listen: "${HOST}:99\x00"}\n')
    assert problems([path], {"HOST": "127.0.0.1"}) == [
        f"{path}:2:28: invalid YAML: special characters are not allowed (U+0000)"
    ]


def test_undefined_alias_and_unsupported_tags_are_reported(tmp_path: Path) -> None:
    undefined = write(tmp_path, "a.yaml", "version: 1\nserver: *defaults\n")
    tagged = write(tmp_path, "b.yaml", "version: 1\nserver: {workers: !env WORKERS}\n")
    assert problems([undefined, tagged]) == [
        f"{undefined}:2:9: invalid YAML: found undefined alias 'defaults'",
        f"{tagged}:2:19: unsupported YAML tag '!env'",
    ]


def test_top_level_must_be_a_mapping_but_an_empty_overlay_is_fine(tmp_path: Path) -> None:
    listed = write(tmp_path, "list.yaml", "- version: 1\n")
    assert problems([listed]) == [
        f"{listed}:1:1: the top level must be a mapping of settings (version:, server:, routes:, ...)"
    ]
    base = write(tmp_path, "base.yaml", "version: 1\n")
    empty = write(tmp_path, "empty.yaml", "# nothing to override in this environment\n")
    assert load([base, empty]).config.version == 1


# --- several files ------------------------------------------------------------------------------------


def test_later_file_extends_earlier_one_and_maps_merge_recursively(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", """\
        server:
          workers: 4
          limits: {max_headers: 50, max_body_bytes: 1MiB}
        """, head=True)
    prod = write(tmp_path, "prod.yaml", """\
        server:
          limits: {max_body_bytes: 10MiB}
        upstreams:
          orders: {balance: least_request}
        """)
    config = load([base, prod]).config
    assert config.server.workers == 4
    assert config.server.limits.max_headers == 50
    assert config.server.limits.max_body_bytes == 10 * 1024 * 1024
    assert config.upstreams["orders"].balance == "least_request"
    assert config.upstreams["orders"].targets == ["http://10.0.0.1:8080"]


def test_routes_merge_by_name_across_files_and_new_names_are_appended(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", """\
        routes:
          - name: orders
            match: {paths: [/orders], methods: [GET]}
            to: orders
          - name: payments
            match: {paths: [/payments]}
            to: payments
        """, head=True)
    overlay = write(tmp_path, "overlay.yaml", """\
        routes:
          - name: search
            match: {paths: [/search]}
            to: orders
          - name: orders
            timeout: 5s
            match: {methods: [GET, POST]}
        """)
    routes = load([base, overlay]).config.routes
    assert [r.name for r in routes] == ["orders", "payments", "search"]
    assert routes[0].timeout == 5.0
    assert routes[0].match.paths == ["/orders"]
    assert routes[0].match.methods == ["GET", "POST"]  # a plain list is replaced, not appended to


def test_lists_without_names_are_replaced_by_the_later_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", """\
        version: 1
        server:
          listen: [{address: "0.0.0.0:8080"}, {address: "0.0.0.0:8443"}]
          trusted_proxies: [10.0.0.0/8]
        """)
    overlay = write(tmp_path, "local.yaml", "server:\n  listen: [{address: '127.0.0.1:9000'}]\n")
    server = load([base, overlay]).config.server
    assert [listener.address for listener in server.listen] == ["127.0.0.1:9000"]
    assert server.trusted_proxies == ["10.0.0.0/8"]


def test_problem_in_a_merged_route_points_at_the_second_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", """\
        routes:
          - name: orders
            match: {paths: [/orders]}
            to: orders
        """, head=True)
    overlay = write(tmp_path, "overlay.yaml", """\
        # production overrides
        routes:
          - name: orders
            timeout: soon
            to: ordres
        """)
    assert problems([base, overlay]) == [
        f"{overlay}:4:14: routes[0].timeout: invalid duration 'soon': expected a number with a unit: 250ms, 2s, "
        "1m, 1h",
        f"{overlay}:5:9: routes[0].to: unknown upstream 'ordres' (declared: orders, payments)",
    ]
    fixed = write(tmp_path, "fixed.yaml", Path(overlay).read_text().replace("soon", "5s"))
    assert problems([base, fixed]) == [
        f"{fixed}:5:9: routes[0].to: unknown upstream 'ordres' (declared: orders, payments)"
    ]


# --- schema problems ----------------------------------------------------------------------------------


def test_duration_and_size_mistakes_name_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        server:
          limits: {max_header_bytes: 16 kilobytes}
          timeouts: {idle: 2 seconds, drain: -5}
        """, head=True)
    assert problems([path]) == [
        f"{path}:6:30: server.limits.max_header_bytes: invalid size '16 kilobytes': expected bytes or a number "
        "with a unit: 16KiB, 10MiB",
        f"{path}:7:20: server.timeouts.idle: invalid duration '2 seconds': expected a number with a unit: 250ms, "
        "2s, 1m, 1h",
        f"{path}:7:38: server.timeouts.drain: a duration cannot be negative",
    ]


def test_unknown_fields_are_reported_at_every_depth_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        sever: {workers: 2}
        upstreams:
          orders:
            targets: [{url: "http://10.0.0.1:8080", wieght: 3}]
            pool: {max_idel: 10}
        routes:
          - name: orders
            match: {path: [/orders]}
            to: orders
        """)
    assert problems([path]) == [
        f"{path}:2:1: sever: unknown field 'sever'; did you mean 'server'?",
        f"{path}:5:45: upstreams.orders.targets[0].wieght: unknown field 'wieght'; did you mean 'weight'?",
        f"{path}:6:12: upstreams.orders.pool.max_idel: unknown field 'max_idel'; did you mean 'max_idle'?",
        f"{path}:9:13: routes[0].match.path: unknown field 'path'; did you mean 'paths'?",
    ]


def test_missing_required_field_points_at_the_mapping_that_lacks_it(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        routes:
          - name: orders
            match: {paths: [/orders]}
          - name: split
            match: {paths: [/split]}
            to: [{upstream: orders, weight: 9}, {upstream: payments}]
        """, head=True)
    assert problems([path]) == [
        f"{path}:6:5: routes[0]: a route needs exactly one of `to` (proxy) and `aggregate` (combine upstream calls)",
        f"{path}:10:41: routes[1].to[1].weight: field required",
    ]


def test_a_value_of_the_wrong_kind_says_what_would_be_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        observability: {access_log: true}
        routes:
          - name: orders
            match: {paths: [/orders]}
            to: 5
        """, head=True)
    assert problems([path]) == [
        f"{path}:5:29: observability.access_log: expected a mapping or false (got true)",
        f"{path}:9:9: routes[0].to: expected a string or a list (got 5)",
    ]


def test_version_is_required_at_the_top(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", "server: {workers: 2}\n")
    assert problems([path]) == [f"{path}:1:1: version: field required"]


# --- cross-references ---------------------------------------------------------------------------------


def test_route_naming_an_undeclared_upstream_lists_the_declared_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        routes:
          - name: home
            match: {exact: /}
            to: orders
          - name: orders
            match: {paths: [/orders]}
            to: ordres
          - name: canary
            match: {paths: [/canary]}
            to:
              - {upstream: orders, weight: 90}
              - {upstream: orders-v2, weight: 10}
        """, head=True)
    assert problems([path]) == [
        f"{path}:11:9: routes[1].to: unknown upstream 'ordres' (declared: orders, payments)",
        f"{path}:16:20: routes[2].to[1].upstream: unknown upstream 'orders-v2' (declared: orders, payments)",
    ]


def test_duplicate_route_names_are_reported_at_the_second(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        routes:
          - {name: orders, match: {paths: [/orders]}, to: orders}
          - {name: orders, match: {paths: [/orders2]}, to: orders}
        """, head=True)
    assert problems([path]) == [f"{path}:7:12: routes[1].name: duplicate route name 'orders' (first used at {path}:6)"]


def test_duplicate_and_overlapping_listener_addresses_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        server:
          listen:
            - address: "0.0.0.0:8080"
            - address: "0.0.0.0:8080"
            - address: "127.0.0.1:8080"
            - address: "[::1]:8080"
        """)
    assert problems([path]) == [
        f"{path}:5:16: server.listen[1].address: duplicate listener address '0.0.0.0:8080' (also server.listen[0])",
        f"{path}:6:16: server.listen[2].address: listener address '127.0.0.1:8080' clashes with server.listen[0] "
        "('0.0.0.0:8080')",
    ]


def test_admin_address_may_not_be_a_public_listener(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        version: 1
        server:
          listen: [{address: "0.0.0.0:8080"}, {address: "0.0.0.0:8443"}]
        admin:
          listen: "0.0.0.0:8443"
        """)
    assert problems([path]) == [
        f"{path}:5:11: admin.listen: the admin address '0.0.0.0:8443' clashes with public listener "
        "server.listen[1] ('0.0.0.0:8443'); the admin API must not share a public port",
    ]


# --- plugins ------------------------------------------------------------------------------------------


def test_unknown_plugin_is_reported_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        plugins:
          cors: {origins: ["*"]}
          requestid: {}
        routes:
          - name: orders
            match: {paths: [/orders]}
            to: orders
            plugins:
              jwtt: {issuer: "https://auth.example.com/"}
        """, head=True)
    assert problems([path], plugin_models=PLUGINS) == [
        f"{path}:7:3: plugins.requestid: unknown plugin 'requestid'; did you mean 'request_id'?",
        f"{path}:13:7: routes[0].plugins.jwtt: unknown plugin 'jwtt'; did you mean 'jwt'?",
    ]


def test_plugin_config_is_validated_by_its_model_at_the_right_place(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        plugins:
          cors: {origins: "*", max_age: 10 minutes}
        routes:
          - name: orders
            match: {paths: [/orders]}
            to: orders
            plugins:
              rewrite: {prefix: /v1, strip_prefx: true}
              jwt: {clock_skew: 30s}
        """, head=True)
    assert problems([path], plugin_models=PLUGINS) == [
        f"{path}:6:19: plugins.cors.origins: expected a list (got '*')",
        f"{path}:6:33: plugins.cors.max_age: invalid duration '10 minutes': expected a number with a unit: "
        "250ms, 2s, 1m, 1h",
        f"{path}:12:30: routes[0].plugins.rewrite.strip_prefx: unknown field 'strip_prefx'; "
        "did you mean 'strip_prefix'?",
        f"{path}:13:12: routes[0].plugins.jwt.issuer: field required",
    ]


def test_enabled_false_alone_disables_a_global_plugin_on_one_route(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        plugins:
          jwt: {issuer: "https://auth.example.com/"}
        routes:
          - name: health
            match: {exact: /healthz}
            to: orders
            plugins:
              jwt: {enabled: false}
        """, head=True)
    loaded = load([path], plugin_models=PLUGINS)
    assert loaded.route_plugins == [{"jwt": None}]
    assert loaded.global_plugins == {"jwt": JwtConfig(issuer="https://auth.example.com/")}


def test_bare_scalar_plugin_is_its_value_field_when_the_model_has_one(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        routes:
          - name: upload
            match: {paths: [/upload]}
            to: orders
            plugins:
              body_limit: 256KiB
              request_id:
          - name: bad
            match: {paths: [/bad]}
            to: orders
            plugins:
              body_limit: 12 parsecs
              rewrite: /v1
        """, head=True)
    assert problems([path], plugin_models=PLUGINS) == [
        f"{path}:16:19: routes[1].plugins.body_limit: invalid size '12 parsecs': expected bytes or a number with "
        "a unit: 16KiB, 10MiB",
        f"{path}:17:16: routes[1].plugins.rewrite: plugin 'rewrite' expects a mapping of settings",
    ]
    good = write(tmp_path, "good.yaml", Path(path).read_text().split("  - name: bad")[0])
    loaded = load([good], plugin_models=PLUGINS)
    # `request_id:` with nothing after it is the plugin with its defaults.
    assert loaded.route_plugins == [{"body_limit": BodyLimitConfig(value=262144), "request_id": RequestIdConfig()}]
    assert loaded.config.routes[0].plugins == {"body_limit": {"value": "256KiB"}, "request_id": {}}


def test_without_plugin_models_plugin_sections_only_need_to_be_mappings(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", "plugins:\n  anything: {goes: here}\n  scalar: 5\n", head=True)
    assert problems([path]) == [f"{path}:7:11: plugins.scalar: expected a mapping (got 5)"]


# --- field paths --------------------------------------------------------------------------------------


def test_field_paths_quote_keys_that_are_not_plain_words() -> None:
    assert format_path(["routes", 2, "match", "paths", 0]) == "routes[2].match.paths[0]"
    assert format_path(["routes", 0, "match", "headers", "x.trace id"]) == 'routes[0].match.headers["x.trace id"]'
    assert parse_path('routes[0].match.headers["x.trace id"]') == ["routes", 0, "match", "headers", "x.trace id"]


@given(st.lists(st.one_of(st.text(min_size=1, max_size=8), st.integers(min_value=0, max_value=99)), max_size=6))
def test_field_path_round_trips_through_its_text(segments: list[str | int]) -> None:
    assert parse_path(format_path(segments)) == segments


def test_top_level_x_keys_hold_anchors_for_reuse(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "version: 1\n"
        "x-timeouts: &slow {timeout: 5s}\n"
        "upstreams: {a: {targets: ['http://127.0.0.1:9000']}}\n"
        "routes:\n"
        "  - {name: r, match: {paths: [/r]}, to: a, <<: *slow}\n"
    )
    loaded = load_config([str(path)])
    assert loaded.config.routes[0].timeout == 5.0


def test_an_undeclared_upstream_is_reported_beside_schema_problems(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(
        "version: 1\n"
        "upstreams: {a: {targets: ['http://127.0.0.1:9000']}}\n"
        "routes:\n"
        "  - {name: r, match: {paths: [/r]}, to: b, tiemout: 2s}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config([str(path)])
    messages = [p.message for p in caught.value.problems]
    assert any("unknown upstream 'b'" in m for m in messages)
    assert any("unknown field 'tiemout'" in m for m in messages)


def test_route_websocket_settings_load_with_units_and_mistakes_name_the_field(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", """\
        routes:
          - {name: chat, match: {paths: [/chat]}, to: orders,
             websocket: {idle_timeout: 90s, max_message_bytes: 1MiB}}
          - {name: plain, match: {paths: [/plain]}, to: orders}
        """, head=True)
    chat, plain = load([good]).config.routes
    assert (chat.websocket.enabled, chat.websocket.idle_timeout, chat.websocket.max_message_bytes) == (
        True, 90.0, 1024 * 1024)
    assert (plain.websocket.enabled, plain.websocket.idle_timeout, plain.websocket.max_message_bytes) == (
        True, 600.0, None)  # relayed by default, 10 minutes of silence, no message limit

    bad = write(tmp_path, "bad.yaml", """\
        routes:
          - name: chat
            match: {paths: [/chat]}
            to: orders
            websocket: {idle_timeout: 0s, max_message_bytes: 0, max_mesage_bytes: 1}
        """, head=True)
    assert problems([bad]) == [
        f"{bad}:9:31: routes[0].websocket.idle_timeout: must be greater than 0.0",
        f"{bad}:9:54: routes[0].websocket.max_message_bytes: must be greater than 0",
        f"{bad}:9:57: routes[0].websocket.max_mesage_bytes: unknown field 'max_mesage_bytes' (expected one of: "
        "enabled, idle_timeout, max_message_bytes)",
    ]


# --- aggregate routes -----------------------------------------------------------------------------------


def test_aggregate_legs_are_checked_like_routes(tmp_path: Path) -> None:
    path = write(tmp_path, "gw.yaml", """\
        routes:
          - name: home
            match: {exact: [/home]}
            aggregate:
              profile: {upstream: orders, path: "/users/{jwt.sub}", required: true, timeout: 300ms}
              recs: {upstream: recs, path: "/recs/{jwt.sub}"}
              odd: {upstream: orders, path: "/x/{cookie.id}"}
              bare: {upstream: orders, path: "users"}
          - name: both
            match: {exact: [/both]}
            to: orders
            aggregate: {a: {upstream: orders, path: /a}}
        """, head=True)
    assert problems([path]) == [
        f"{path}:10:24: routes[0].aggregate.recs.upstream: unknown upstream 'recs' (declared: orders, payments)",
        f"{path}:11:37: routes[0].aggregate.odd.path: unknown value {{cookie.id}}: use jwt.CLAIM, consumer, "
        "header.NAME or query.NAME",
        f"{path}:12:38: routes[0].aggregate.bare.path: a leg's path starts with '/'",
        f"{path}:13:5: routes[1]: a route needs exactly one of `to` (proxy) and `aggregate` (combine upstream calls)",
    ]
