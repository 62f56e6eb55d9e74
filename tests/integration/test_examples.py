"""The configs in examples/ validate as shipped, and run against the demo services as their comments say."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from frontgate.demo.run import ServiceThread
from tests.integration.demo_helpers import REPO, GatewayProcess, run_cli, running
from tests.integration.helpers import free_port

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
TIMEOUT = httpx.Timeout(5.0)


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, int]]:
    """Demo service instances on free ports: instance name -> port."""
    thread = ServiceThread()
    try:
        yield thread.start(["orders", "orders-v1", "orders-v1b", "orders-v2", "payments", "payments-acme",
                            "payments-globex"])
    finally:
        thread.stop()


def running_example(name: str, tmp_path: Path, env: dict[str, str]) -> AbstractContextManager[GatewayProcess]:
    """`frontgate run -c examples/NAME` with its ports (`${PORT:-...}` and the like) set in `env`."""
    port, admin_port = free_port(), free_port()
    env = {"PORT": str(port), "ADMIN_PORT": str(admin_port), **env}
    args = ["run", "-c", str(REPO / "examples" / name), "--workers", "1"]
    return running(args, port, admin_port, tmp_path / f"{name}.out", env)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


def test_the_expected_examples_ship() -> None:
    assert {"minimal.yaml", "canary.yaml", "multi-tenant.yaml"} <= {path.name for path in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_validates_without_any_environment(example: Path) -> None:
    result = run_cli("validate", "-c", str(example.relative_to(REPO)), timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"examples/{example.name}: ok" in result.stdout


def test_minimal_example_forwards_everything_to_its_one_upstream(services: dict[str, int], tmp_path: Path,
                                                                client: httpx.Client) -> None:
    with running_example("minimal.yaml", tmp_path, {"APP_PORT": str(services["orders"])}) as gateway:
        orders = client.get(gateway.url("/orders"))
        assert orders.status_code == 200
        assert orders.json()["served_by"] == "orders"
        echo = client.post(gateway.url("/_echo/any/path?q=1"), content=b"hello")
        assert echo.json()["target"] == "/_echo/any/path?q=1"
        assert echo.json()["body_length"] == 5
        assert gateway.terminate(timeout=10) == 0


def test_canary_example_keeps_a_cookie_cohort_and_has_a_preview_route(services: dict[str, int], tmp_path: Path,
                                                                      client: httpx.Client) -> None:
    env = {"STABLE_PORT_A": str(services["orders-v1"]), "STABLE_PORT_B": str(services["orders-v1b"]),
           "CANARY_PORT": str(services["orders-v2"])}
    with running_example("canary.yaml", tmp_path, env) as gateway:
        def side(user: str) -> str:
            response = client.get(gateway.url("/orders"), headers={"cookie": f"user_id={user}"})
            return str(response.json()["served_by"])

        sides = {user: side(user) for user in (f"user-{n}" for n in range(100))}
        canary_users = [user for user, name in sides.items() if name == "orders-v2"]
        assert 0 < len(canary_users) < 30  # about 10%
        assert {side(canary_users[0]) for _ in range(10)} == {"orders-v2"}
        stable = next(user for user, name in sides.items() if name != "orders-v2")
        assert {side(stable) for _ in range(10)} <= {"orders-v1", "orders-v1b"}
        preview = client.get(gateway.url("/orders"), headers={"x-canary": "1", "cookie": f"user_id={stable}"})
        assert preview.json()["served_by"] == "orders-v2"


def test_multi_tenant_example_routes_by_header_and_by_host(services: dict[str, int], tmp_path: Path,
                                                          client: httpx.Client) -> None:
    env = {"SHARED_PORT": str(services["payments"]), "ACME_PORT": str(services["payments-acme"]),
           "GLOBEX_PORT": str(services["payments-globex"])}
    with running_example("multi-tenant.yaml", tmp_path, env) as gateway:
        body = b'{"amount": 12.5}'
        acme = client.post(gateway.url("/payments"), headers={"x-tenant": "acme"}, content=body)
        assert acme.status_code == 201
        assert acme.json()["served_by"] == "payments-acme"
        assert acme.headers["x-tenant-isolation"] == "dedicated"
        globex = client.post(gateway.url("/payments"), headers={"host": "globex.api.example.com"}, content=body)
        assert globex.json()["served_by"] == "payments-globex"
        assert globex.json()["tenant"] == "globex"  # set by the gateway from the host name
        shared = client.post(gateway.url("/payments"), headers={"x-tenant": "initech"}, content=body)
        assert shared.json()["served_by"] == "payments"
        too_big = client.post(gateway.url("/payments"), headers={"x-tenant": "acme"}, content=b"x" * 300_000)
        assert too_big.status_code == 413
