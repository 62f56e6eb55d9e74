"""The commands as a user types them: output and exit codes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """\
version: 1
server:
  listen: [{address: "127.0.0.1:18080"}]
upstreams:
  orders-v1: {targets: ["http://127.0.0.1:9001"]}
  orders-v2: {targets: ["http://127.0.0.1:9002"]}
  payments-acme: {targets: ["http://127.0.0.1:9003"]}
routes:
  - name: orders
    match: {paths: [/orders], methods: [GET, POST]}
    to: [{upstream: orders-v1, weight: 95}, {upstream: orders-v2, weight: 5}]
    sticky_on: header:x-user
    plugins:
      rewrite: {strip_prefix: true, prefix: /v1}
  - name: payments-acme
    match: {paths: [/payments], headers: {x-tenant: acme}}
    to: payments-acme
"""


def frontgate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontgate", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "frontgate.yaml"
    path.write_text(CONFIG)
    return path


def test_validate_accepts_a_good_file(config: Path) -> None:
    done = frontgate("validate", "-c", str(config))
    assert done.returncode == 0
    assert "ok (2 routes, 3 upstreams)" in done.stdout


def test_validate_prints_every_problem_with_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("to: payments-acme", "to: payments-acmee").replace(
        "sticky_on: header:x-user", "sticky_on: header:x-user\n    timeout: 2 seconds"))
    done = frontgate("validate", "-c", str(bad))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert f"{bad}:13:14: routes[0].timeout: invalid duration '2 seconds'" in lines[0]
    assert lines[1].startswith(f"{bad}:18:9: routes[1].to: unknown upstream 'payments-acmee'")
    assert lines[-1] == "2 problems found"


def test_validate_reports_yaml_syntax_errors_with_position(tmp_path: Path) -> None:
    bad = tmp_path / "syntax.yaml"
    bad.write_text("version: 1\nroutes: [\n  {name: a\n")
    done = frontgate("validate", "-c", str(bad))
    assert done.returncode == 1
    assert done.stderr.startswith(f"{bad}:")


def test_env_substitution_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(CONFIG.replace("127.0.0.1:9003", "${PAYMENTS_HOST:-127.0.0.1}:${PAYMENTS_PORT}"))
    done = frontgate("validate", "-c", str(path))
    assert done.returncode == 1
    assert "PAYMENTS_PORT" in done.stderr


def test_routes_prints_the_table(config: Path) -> None:
    done = frontgate("routes", "-c", str(config))
    assert done.returncode == 0
    assert "orders-v1 (95)" in done.stdout and "payments-acme" in done.stdout


def test_routes_explains_where_a_request_goes(config: Path) -> None:
    done = frontgate("routes", "-c", str(config), "GET", "http://api.example.com/payments/9", "-H", "x-tenant: acme")
    assert done.returncode == 0
    assert "=> route payments-acme: upstream payments-acme" in done.stdout
    other = frontgate("routes", "-c", str(config), "GET", "/payments/9", "-H", "x-tenant: beta")
    assert "=> 404 not_found" in other.stdout
    wrong_method = frontgate("routes", "-c", str(config), "DELETE", "/orders/1")
    assert "=> 405 method_not_allowed (allow: GET, HEAD, POST)" in wrong_method.stdout


def test_routes_and_policy_tests_know_a_cors_preflight_on_a_route_without_options(tmp_path: Path) -> None:
    config = tmp_path / "cors.yaml"
    config.write_text("""\
version: 1
upstreams: {app: {targets: ["http://127.0.0.1:9"]}}
plugins: {cors: {origins: ["https://app.example.com"]}}
routes:
  - {name: orders, match: {paths: [/orders], methods: [GET]}, to: app}
""")
    preflight = frontgate("routes", "-c", str(config), "OPTIONS", "http://x/orders", "-H",
                          "Origin: https://app.example.com", "-H", "Access-Control-Request-Method: GET")
    assert "a CORS preflight" in preflight.stdout and "=> route orders" in preflight.stdout
    assert "plugins in order: cors" in preflight.stdout
    plain = frontgate("routes", "-c", str(config), "OPTIONS", "http://x/orders")
    assert "=> 405 method_not_allowed" in plain.stdout
    tests = tmp_path / "tests.yaml"
    tests.write_text("""\
tests:
  - name: browsers may ask before they GET
    request: {method: OPTIONS, url: /orders,
              headers: {origin: "https://app.example.com", access-control-request-method: GET}}
    expect: {status: 204, route: orders}
  - name: a plain OPTIONS is still refused
    request: {method: OPTIONS, url: /orders}
    expect: {status: 405}
""")
    done = frontgate("test", "-c", str(config), str(tests))
    assert done.returncode == 0, done.stdout


def test_policy_tests_pass_and_fail_with_exit_codes(config: Path, tmp_path: Path) -> None:
    tests = tmp_path / "tests.yaml"
    tests.write_text("""\
tests:
  - name: acme payments are isolated
    request: {method: GET, url: /payments/7, headers: {x-tenant: acme}}
    expect: {route: payments-acme, upstream: payments-acme, path: /payments/7}
  - name: alice is in a stable cohort
    request: {method: GET, url: /orders/1, headers: {x-user: alice}}
    expect: {route: orders, path: /v1/1}
  - name: other tenants find nothing
    request: {method: GET, url: /payments/7, headers: {x-tenant: beta}}
    expect: {status: 404}
""")
    done = frontgate("test", "-c", str(config), str(tests))
    assert done.returncode == 0, done.stdout
    assert "3 passed, 0 failed" in done.stdout

    tests.write_text(tests.read_text().replace("status: 404", "status: 200"))
    failed = frontgate("test", "-c", str(config), str(tests))
    assert failed.returncode == 1
    assert "FAIL other tenants find nothing" in failed.stdout
    assert "status: expected 200, got 404" in failed.stdout


def test_hash_key_reads_stdin(config: Path) -> None:
    done = frontgate("hash-key", stdin="s3cret-key\n")
    assert done.returncode == 0
    assert done.stdout.strip() == "sha256:" + hashlib.sha256(b"s3cret-key").hexdigest()


def test_usage_errors_exit_2(config: Path) -> None:
    assert frontgate("frobnicate").returncode == 2
    assert frontgate("validate").returncode == 2


def test_run_check_validates_and_exits(config: Path) -> None:
    done = frontgate("run", "-c", str(config), "--check")
    assert done.returncode == 0
