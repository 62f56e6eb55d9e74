"""Helpers for the demo and examples tests: run `frontgate demo` / `frontgate run -c FILE` as a subprocess,
and turn the curl commands the demo prints into requests.

Generic helpers (free ports, waiting for a port) come from helpers.py; these are only what the demo adds.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.integration.helpers import wait_for_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 20.0


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    output_path: Path

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then the exit code; kills it (and fails) if it takes longer than `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"still running {timeout}s after SIGTERM:\n{self.output()[-3000:]}") from None


def wait_until_ready(gateway: GatewayProcess, timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait for the admin /readyz to answer 200, failing early (with the output) if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise AssertionError(f"exited with {gateway.process.returncode}:\n{gateway.output()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{gateway.admin_port}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout}s:\n{gateway.output()[-3000:]}")


@contextlib.contextmanager
def running(args: list[str], port: int, admin_port: int, output_path: Path,
            env: dict[str, str] | None = None) -> Iterator[GatewayProcess]:
    """`python -m frontgate ARGS` with stdout and stderr in a file (a pipe nobody reads would fill up)."""
    with open(output_path, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "frontgate", *args], stdout=out,
                                   stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
    gateway = GatewayProcess(process, port, admin_port, output_path)
    try:
        wait_until_ready(gateway)
        wait_for_port(port, timeout=5)
        yield gateway
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontgate", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout, check=False)


# --- the printed curl commands ------------------------------------------------------------------------


@dataclass
class CurlCommand:
    """The parts of a printed curl command that matter for replaying it with httpx."""

    line: str
    url: str
    method: str = "GET"
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: str | None = None
    no_buffer: bool = False  # -N: the user expects a stream

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"


def parse_curl(line: str) -> CurlCommand:
    words = shlex.split(line)
    if words[0] != "curl":
        raise ValueError(f"not a curl command: {line}")
    url = ""
    command = CurlCommand(line, "")
    items = iter(words[1:])
    for word in items:
        if word in ("-X", "--request"):
            command.method = next(items)
        elif word in ("-H", "--header"):
            name, _, value = next(items).partition(":")
            command.headers.append((name.strip(), value.strip()))
        elif word in ("-d", "--data"):
            command.data = next(items)
        elif word in ("-N", "--no-buffer"):
            command.no_buffer = True
        elif word.startswith("-"):
            if set(word[1:]) - set("isv"):  # -i, -s, -v only change what curl prints
                raise ValueError(f"unexpected curl option {word} in: {line}")
        else:
            url = word
    if command.data is not None and command.method == "GET":
        command.method = "POST"  # as curl does for -d
    command.url = url if "://" in url else f"http://{url}"
    if command.data is not None and not any(k.lower() == "content-type" for k, _ in command.headers):
        command.headers.append(("Content-Type", "application/x-www-form-urlencoded"))  # curl's default
    return command


def printed_curl_commands(output: str) -> list[CurlCommand]:
    return [parse_curl(line.strip()) for line in output.splitlines() if line.strip().startswith("curl ")]
