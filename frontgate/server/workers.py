"""Processes: one worker serves in-process; several are forked by a small master that restarts a crashed
worker, forwards SIGHUP after validating the file, and on SIGTERM waits for every worker to drain."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from frontgate.config.loader import load_config
from frontgate.errors import ConfigError
from frontgate.observability.sharing import make_run_dir, record_rejected_reload, remove_run_dir
from frontgate.plugins import plugin_models

log = logging.getLogger("frontgate")


def default_pid_file(config_paths: Sequence[str]) -> Path:
    digest = hashlib.sha256(str(Path(config_paths[0]).resolve()).encode()).hexdigest()[:12]
    return Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / f"frontgate-{digest}.pid"


def run_worker(config_paths: Sequence[str], index: int, workers: int, reuse_port: bool) -> None:
    uvloop.run(_serve(config_paths, index, workers, reuse_port))


async def _serve(config_paths: Sequence[str], index: int, workers: int, reuse_port: bool) -> None:
    from frontgate.admin.server import AdminServer
    from frontgate.observability.sharing import start_sharing, stop_sharing
    from frontgate.server.gateway import Gateway

    loop = asyncio.get_running_loop()
    gateway = Gateway.from_files(config_paths, loop)
    await gateway.start(reuse_port)
    start_sharing(gateway, index)  # with several workers: /metrics on worker 0 adds up everyone's numbers
    admin = None
    admin_config = gateway.runtime.config.admin
    if index == 0 and admin_config is not None:
        admin = AdminServer(gateway, index, workers)
        await admin.start(admin_config.listen)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(gateway.reload()))
    loop.add_signal_handler(signal.SIGUSR1, lambda: gateway.access_log.reopen())  # after log rotation (the log
    # object is looked up each time: a reload may have replaced it)
    addresses = ", ".join(listener.address for listener in gateway.runtime.config.server.listen)
    log.info("worker %d (pid %d) serving %s", index, os.getpid(), addresses)
    await stop.wait()
    log.info("worker %d draining", index)
    await gateway.shutdown()
    stop_sharing()
    if admin is not None:
        admin.close()


class Master:
    """Forks `workers` processes and keeps them running until told to stop."""

    def __init__(self, config_paths: Sequence[str], workers: int) -> None:
        self.config_paths = list(config_paths)
        self.workers = workers
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.metrics_dir: str | None = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGUSR1, self._on_reopen)
        self.metrics_dir = make_run_dir()  # inherited by the workers: how /metrics sums them
        try:
            return self._supervise()
        finally:
            remove_run_dir(self.metrics_dir)

    def _supervise(self) -> int:
        for index in range(self.workers):
            self._spawn(index)
        failures = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            worker: int | None = self.children.pop(pid, None)
            if worker is None or self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            log.error("worker %d (pid %d) exited with %d; restarting", worker, pid, code)
            failures += 1
            time.sleep(min(5.0, 0.1 * failures))  # a worker that dies at start must not spin the CPU
            self._spawn(worker)
        return 0

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the worker's loop handles it
            code = 0
            try:
                run_worker(self.config_paths, index, self.workers, reuse_port=True)
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = index

    def _signal_children(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                self.children.pop(pid, None)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        self._signal_children(signal.SIGTERM)

    def _on_reopen(self, signum: int, frame: object) -> None:
        self._signal_children(signal.SIGUSR1)  # each worker reopens its access-log file

    def _on_reload(self, signum: int, frame: object) -> None:
        # Validate once here, so a bad file is reported once and no worker even tries it.
        try:
            load_config(self.config_paths, plugin_models=plugin_models())
        except ConfigError as error:
            log.error("reload rejected, workers keep the running config:\n%s", error)
            record_rejected_reload(self.metrics_dir)
            return
        self._signal_children(signal.SIGHUP)
