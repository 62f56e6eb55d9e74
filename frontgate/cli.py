"""The `frontgate` command. The only module that exits: 0 ok, 1 invalid config or failed test, 2 usage."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from frontgate import __version__
from frontgate.config.loader import LoadedConfig, load_config
from frontgate.errors import ConfigError, HttpError
from frontgate.plugins import plugin_models

if TYPE_CHECKING:
    from frontgate.config.compile import CompiledRoute

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _load(paths: Sequence[str]) -> LoadedConfig:
    return load_config(list(paths), plugin_models=plugin_models())


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    count = len(error.problems)
    print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)


def _worker_count(setting: int | str, override: int | None) -> int:
    if override is not None:
        return override
    if setting == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return int(setting)


def cmd_run(args: argparse.Namespace) -> int:
    from frontgate.server.workers import Master, default_pid_file, run_worker

    try:
        loaded = _load(args.config)
    except ConfigError as error:
        _print_problems(error)
        return EXIT_INVALID
    if args.check:
        print(f"{', '.join(args.config)}: ok")
        return EXIT_OK
    server = loaded.config.server
    workers = _worker_count(server.workers, args.workers)
    pid_file = Path(server.pid_file) if server.pid_file else default_pid_file(args.config)
    try:
        pid_file.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        logging.getLogger("frontgate").warning("cannot write pid file %s: %s", pid_file, exc)
    try:
        if workers == 1:
            run_worker(args.config, 0, 1, reuse_port=False)
            return EXIT_OK
        return Master(args.config, workers).run()
    except OSError as exc:
        print(f"frontgate: cannot start: {exc}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        try:
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        except OSError:
            pass


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        loaded = _load(args.config)
    except ConfigError as error:
        _print_problems(error)
        return EXIT_INVALID
    config = loaded.config
    print(f"{', '.join(args.config)}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams)")
    return EXIT_OK


def cmd_routes(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from frontgate.config.compile import compile_runtime
    from frontgate.upstream.cluster import UpstreamRegistry

    try:
        loaded = _load(args.config)
    except ConfigError as error:
        _print_problems(error)
        return EXIT_INVALID
    runtime = compile_runtime(loaded, UpstreamRegistry(), 0)
    console = Console()
    if args.method is None:
        table = Table("route", "match", "to", "plugins")
        for route in runtime.routes:
            match = route.config.match
            parts = [f"prefix {p}" for p in match.paths] + [f"exact {p}" for p in match.exact]
            parts += [f"regex {p}" for p in match.regex]
            if match.hosts:
                parts.append("hosts " + ",".join(match.hosts))
            if match.methods:
                parts.append("methods " + ",".join(match.methods))
            parts += [f"header {k}={v}" for k, v in match.headers.items()]
            to = ", ".join(f"{w.upstream} ({w.weight})" if len(route.config.split) > 1 else w.upstream
                           for w in route.config.split) or _legs(route)
            table.add_row(route.name, "\n".join(parts), to, ", ".join(p.name for p in route.plugins) or "-")
        console.print(table)
        return EXIT_OK
    if args.url is None:
        print("frontgate routes: give both METHOD and URL", file=sys.stderr)
        return EXIT_USAGE
    return _explain(console, runtime, args.method.upper(), args.url, args.header or [])


def _explain(console: object, runtime: object, method: str, url: str, header_args: list[str]) -> int:
    from frontgate.config.compile import Runtime
    from frontgate.pipeline.context import RequestContext
    from frontgate.routing.normalize import normalize_path, split_target

    assert isinstance(runtime, Runtime)
    parts = urlsplit(url if "://" in url else f"http://localhost{url}")
    headers: list[tuple[bytes, bytes]] = []
    for item in header_args:
        name, sep, value = item.partition(":")
        if not sep:
            print(f"frontgate routes: bad header {item!r}: expected 'Name: value'", file=sys.stderr)
            return EXIT_USAGE
        headers.append((name.strip().lower().encode(), value.strip().encode()))
    host = (parts.hostname or "").lower()
    raw_path, _ = split_target((parts.path or "/").encode())
    try:
        path = normalize_path(raw_path)
    except HttpError as error:
        print(f"{method} {url}: {error.status} {error.message}")
        return EXIT_OK
    print(f"{method} {host}{path}")
    for name, reason in runtime.router.explain(method, host, path, headers):
        print(f"  {name}: {reason}")
    ctx = RequestContext(method, path, b"", headers, host, "127.0.0.1", "127.0.0.1", "http", "1.1")
    try:
        route = runtime.match_route(ctx)
    except HttpError as error:
        extra = "".join(f" ({k.decode()}: {v.decode()})" for k, v in error.headers)
        print(f"=> {error.status} {error.code}{extra}")
        return EXIT_OK
    if route.config.match.methods and method not in route.config.match.methods:
        print("  a CORS preflight: matched as the method it asks about; the cors plugin answers it")
    targets = ", ".join(t.url for name in route.clusters for t in route.clusters[name].targets)
    if route.config.aggregate:
        print(f"=> route {route.name}: {_legs(route)} [{targets}]")
    else:
        split = ", ".join(f"{w.upstream} weight {w.weight}" for w in route.config.split)
        print(f"=> route {route.name}: upstream {split} [{targets}]")
    print(f"   plugins in order: {', '.join(p.name for p in route.plugins) or 'none'}")
    return EXIT_OK


def _legs(route: CompiledRoute) -> str:
    legs = route.config.aggregate or {}
    return "aggregate of " + ", ".join(f"{key} ({leg.upstream}{', required' if leg.required else ''})"
                                       for key, leg in legs.items())


def cmd_test(args: argparse.Namespace) -> int:
    from frontgate.config.compile import compile_runtime
    from frontgate.policy_tests import load_tests, run_tests
    from frontgate.upstream.cluster import UpstreamRegistry

    try:
        loaded = _load(args.config)
        tests = load_tests(args.tests)
    except ConfigError as error:
        _print_problems(error)
        return EXIT_INVALID
    outcomes = run_tests(compile_runtime(loaded, UpstreamRegistry(), 0), tests)
    for outcome in outcomes:
        print(f"{'ok  ' if outcome.passed else 'FAIL'} {outcome.name}")
        for failure in outcome.failures:
            print(f"       {failure}")
    failed = sum(not o.passed for o in outcomes)
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    return EXIT_INVALID if failed else EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    from frontgate.server.workers import default_pid_file

    try:
        loaded = _load(args.config)
    except ConfigError as error:
        _print_problems(error)
        print("reload refused: the running gateway keeps its config", file=sys.stderr)
        return EXIT_INVALID
    if args.pid is not None:
        pid = args.pid
    else:
        server = loaded.config.server
        pid_file = Path(server.pid_file) if server.pid_file else default_pid_file(args.config)
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            print(f"frontgate reload: no running gateway found (pid file {pid_file})", file=sys.stderr)
            return EXIT_INVALID
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"frontgate reload: no process {pid}", file=sys.stderr)
        return EXIT_INVALID
    print(f"reload signalled to pid {pid}")
    return EXIT_OK


def cmd_hash_key(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("frontgate hash-key: read an empty key on stdin", file=sys.stderr)
        return EXIT_USAGE
    print("sha256:" + hashlib.sha256(key.encode()).hexdigest())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from frontgate.demo.run import run_demo

    return run_demo(port=args.port, admin_port=args.admin_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frontgate", description="An API gateway: one front door for your services.")
    parser.add_argument("--version", action="version", version=f"frontgate {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", action="append", required=True, metavar="FILE",
                       help="config file; repeat to extend it with later files")

    run = commands.add_parser("run", help="serve")
    with_config(run)
    run.add_argument("--workers", type=int, help="worker processes (default: server.workers, auto = one per core)")
    run.add_argument("--check", action="store_true", help="validate and exit")
    run.set_defaults(func=cmd_run)

    validate = commands.add_parser("validate", help="check a config file, printing every problem")
    with_config(validate)
    validate.set_defaults(func=cmd_validate)

    routes = commands.add_parser("routes", help="print the route table, or explain where a request goes")
    with_config(routes)
    routes.add_argument("method", nargs="?", metavar="METHOD")
    routes.add_argument("url", nargs="?", metavar="URL")
    routes.add_argument("-H", "--header", action="append", metavar="'K: V'")
    routes.set_defaults(func=cmd_routes)

    test = commands.add_parser("test", help="run declarative route and policy tests, without upstreams")
    with_config(test)
    test.add_argument("tests", metavar="TESTS.yaml")
    test.set_defaults(func=cmd_test)

    reload = commands.add_parser("reload", help="validate the file, then tell the running gateway to re-read it")
    with_config(reload)
    reload.add_argument("--pid", type=int, help="the gateway's pid (default: from its pid file)")
    reload.set_defaults(func=cmd_reload)

    hash_key = commands.add_parser("hash-key", help="read an API key on stdin, print the hash for the config")
    hash_key.set_defaults(func=cmd_hash_key)

    demo = commands.add_parser("demo", help="run the gateway with bundled sample services")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--admin-port", type=int, default=9901)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
