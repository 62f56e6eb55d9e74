"""`frontgate demo`: the sample services on a background thread, the gateway in the foreground.

The services get free ports, passed to the bundled demo.yaml through `DEMO_*_PORT` environment variables
(the same `${VAR}` substitution any config can use), and the gateway then runs exactly as `frontgate run`
does with one worker, so Ctrl-C / SIGTERM drain it the usual way before the services stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.resources
import os
import shlex
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvloop
from rich.console import Console
from rich.markup import escape

from frontgate.demo.services import DEMO_INSTANCES, start_all, stop_all

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_HOST = "127.0.0.1"  # the demo listens on loopback only


def port_env_var(instance: str) -> str:
    """`orders-v1` -> `DEMO_ORDERS_V1_PORT`, the variable demo.yaml reads the instance's port from."""
    return f"DEMO_{instance.upper().replace('-', '_')}_PORT"


@dataclass(frozen=True)
class Example:
    comment: str
    command: str


def examples(port: int, admin_port: int) -> list[Example]:
    """The ready-to-paste commands the banner prints (the demo test runs every one of them)."""
    gw = f"localhost:{port}"
    order = shlex.quote('{"sku": "book-42", "qty": 1}')
    payment = shlex.quote('{"amount": 12.5, "currency": "EUR"}')
    return [
        Example("orders through the 95/5 canary: see X-Request-Id, and no Server header",
                f"curl -i {gw}/orders"),
        Example("sticky canary: alice always lands on the same version (served_by); try other users",
                f"curl -s {gw}/orders -H 'x-user: alice'"),
        Example("create an order: 201 with a Location header",
                f"curl -i -X POST {gw}/orders -H 'content-type: application/json' -d {order}"),
        Example("tenant routing: x-tenant: acme goes to acme's own payments instance",
                f"curl -s -X POST {gw}/payments -H 'x-tenant: acme' -d {payment}"),
        Example("everyone else goes to the shared payments instance",
                f"curl -s -X POST {gw}/payments -d {payment}"),
        Example("the catalog speaks French too, cached at the edge per language: run it twice for "
                "X-Cache-Status: HIT",
                f"curl -i {gw}/catalog -H 'accept-language: fr'"),
        Example("path rewrite: /v1/users/alice reaches the users service as /users/alice",
                f"curl -s {gw}/v1/users/alice"),
        Example("server-sent events pass through as they happen, one every 200 ms",
                f"curl -N {gw}/recs/stream"),
        Example("what the service received: forwarding headers set by the gateway, a spoofed one dropped",
                f"curl -s '{gw}/echo/hello?debug=1' -H 'x-forwarded-for: 6.6.6.6'"),
        Example("no route: the gateway's own JSON error",
                f"curl -i {gw}/nope"),
        Example("the admin listener: workers, routes, upstream pools",
                f"curl -s localhost:{admin_port}/status"),
    ]


# --- ports --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _bind_error(port: int) -> OSError | None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway binds
        try:
            sock.bind((_HOST, port))
        except OSError as exc:
            return exc
    return None


def port_problem(port: int, option: str) -> str | None:
    """Why the gateway could not listen on `port`, as advice for the user; None when it can."""
    exc = _bind_error(port)
    if exc is None:
        return None
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} is already in use (another frontgate demo, or another server?). "
                f"Pick another one: frontgate demo {option} {_suggest(port)}")
    if exc.errno == errno.EACCES:
        return f"no permission to listen on port {port}; use a port above 1023: {option} {_suggest(port)}"
    return f"cannot listen on port {port}: {exc.strerror or exc}"


def _suggest(port: int) -> int:
    candidate = port + 1 if 1023 < port < 65535 else 8081
    return candidate if _bind_error(candidate) is None else free_port()


# --- the services' thread -----------------------------------------------------------------------------


class ServiceThread:
    """The sample services on their own event loop in a daemon thread, so the gateway keeps the main
    thread (signal handlers only work there) and a crash can never leave orphan processes behind."""

    def __init__(self) -> None:
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="demo-services", daemon=True)
        self._servers: list[asyncio.Server] = []

    def start(self, names: Sequence[str] = DEMO_INSTANCES, timeout: float = 10.0) -> dict[str, int]:
        """Start the instances `names` on free ports; return instance name -> port."""
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(start_all(_HOST, names), self._loop).result(timeout)
        self._servers = [server for server, _ in started.values()]
        return {name: port for name, (_, port) in started.items()}

    def stop(self, timeout: float = 3.0) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(stop_all(self._servers), self._loop).result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


@contextlib.contextmanager
def demo_config_path() -> Iterator[Path]:
    """The packaged demo.yaml as a real file (it is one, unless installed from a zip)."""
    with importlib.resources.as_file(importlib.resources.files("frontgate.demo") / "demo.yaml") as path:
        yield path


# --- the banner ---------------------------------------------------------------------------------------


def print_banner(console: Console, port: int, admin_port: int, ports: dict[str, int], config: Path) -> None:
    services = "  ".join(f"{name} :{ports[name]}" for name in DEMO_INSTANCES if name in ports)
    console.print()
    console.print("[bold]frontgate demo[/bold]: a gateway in front of five sample services")
    console.print(f"  gateway   [cyan]http://localhost:{port}[/cyan]")
    console.print(f"  admin     [cyan]http://localhost:{admin_port}[/cyan]")
    console.print(f"  services  {escape(services)}")
    console.print(f"  config    {escape(str(config))}")
    console.print()
    console.print("[bold]Try these[/bold] (paste them into another terminal):")
    for example in examples(port, admin_port):
        console.print(f"  [dim]# {escape(example.comment)}[/dim]")
        console.print(f"  [green]{escape(example.command)}[/green]")
    console.print()
    console.print("Ctrl-C stops everything. The access log follows, one JSON line per request.")
    console.print()


# --- run ----------------------------------------------------------------------------------------------


def run_demo(port: int = 8080, admin_port: int = 9901) -> int:
    """Run the demo until Ctrl-C or SIGTERM; return the exit code (0 ok, 1 could not start, 2 usage)."""
    out = Console(soft_wrap=True, highlight=False)  # soft wrap: commands stay on one pasteable line
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    port = port or free_port()  # 0: any free port
    admin_port = admin_port or free_port()
    if port == admin_port:
        err.print(f"[red]frontgate demo:[/red] --port and --admin-port are both {port}; give two different ports")
        return EXIT_USAGE
    for number, option in ((port, "--port"), (admin_port, "--admin-port")):
        problem = port_problem(number, option)
        if problem is not None:
            err.print(f"[red]frontgate demo:[/red] {escape(problem)}")
            return EXIT_FAILED

    services = ServiceThread()
    try:
        try:
            ports = services.start()
        except (OSError, TimeoutError) as exc:
            err.print(f"[red]frontgate demo:[/red] cannot start the sample services: {escape(str(exc))}")
            return EXIT_FAILED
        os.environ.update({"DEMO_PORT": str(port), "DEMO_ADMIN_PORT": str(admin_port)})
        os.environ.update({port_env_var(name): str(p) for name, p in ports.items()})
        with demo_config_path() as config:
            print_banner(out, port, admin_port, ports, config)
            sys.stdout.flush()  # the banner must show before the gateway's own output, even in a pipe
            return _run_gateway(config, err)
    except KeyboardInterrupt:  # Ctrl-C before the gateway's own signal handlers were installed
        return EXIT_OK
    finally:
        services.stop()


def _run_gateway(config: Path, err: Console) -> int:
    from frontgate.errors import ConfigError
    from frontgate.server.workers import run_worker

    try:
        run_worker([str(config)], 0, 1, reuse_port=False)
    except ConfigError as error:
        for problem in error.problems:
            err.print(escape(str(problem)))
        return EXIT_FAILED
    except OSError as exc:
        err.print(f"[red]frontgate demo:[/red] cannot start the gateway: {escape(str(exc))}")
        return EXIT_FAILED
    return EXIT_OK
