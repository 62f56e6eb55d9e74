"""Metrics across worker processes: each worker writes its numbers to a file once a second; worker 0 (the
one with the admin listener) adds its own live numbers to the others' files when /metrics is scraped.

Why files and not prometheus_client's multiprocess mode: that mode writes every increment to an mmap'd file
under a lock, several microseconds per sample on the request path. Here a request touches only plain
Python counters; the cost of sharing is one JSON file per worker per second, off the request path, and at
most a second of staleness for the other workers' share.

The master makes a fresh directory per run (`FRONTGATE_METRICS_DIR`, inherited by the workers it forks)
and removes it at exit. A restarted worker starts from its predecessor's last counts, so summed counters
never go backwards. The master also writes the reloads it rejected itself (a bad file never reaches the
workers) to `master.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from frontgate.observability.collect import collect_worker
from frontgate.observability.families import FamilySet

if TYPE_CHECKING:
    from frontgate.server.gateway import Gateway

log = logging.getLogger("frontgate.metrics")

ENV_DIR = "FRONTGATE_METRICS_DIR"
WRITE_EVERY = 1.0  # seconds: how stale another worker's numbers can be on /metrics
_MASTER_FILE = "master.json"


def make_run_dir() -> str:
    """In the master, before forking: a private directory the workers find through the environment."""
    path = tempfile.mkdtemp(prefix="frontgate-metrics-")
    os.environ[ENV_DIR] = path
    return path


def remove_run_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(ENV_DIR) == path:
        del os.environ[ENV_DIR]


def record_rejected_reload(path: str | None) -> None:
    """In the master: one more reload refused at validation (workers never saw it)."""
    if path is None:
        return
    file = Path(path) / _MASTER_FILE
    try:
        count = int(json.loads(file.read_text()).get("reloads_rejected", 0))
    except (OSError, ValueError):
        count = 0
    _write_atomically(file, json.dumps({"reloads_rejected": count + 1}).encode())


class WorkerShare:
    """This worker's side: write the snapshot file every second; worker 0 also reads everyone else's."""

    def __init__(self, directory: Path, index: int, collect: Callable[[], FamilySet]) -> None:
        self.directory = directory
        self.index = index
        self._collect = collect
        self._file = directory / f"worker-{index}.json"
        self._handle: asyncio.TimerHandle | None = None
        # What this worker's predecessor had counted (after a crash and restart): carried on.
        self.carried = FamilySet()
        with contextlib.suppress(OSError, ValueError):
            self.carried.merge(FamilySet.from_json(self._file.read_bytes()), counters_only=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = loop.call_later(WRITE_EVERY, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.write()  # the last numbers, so worker 0 still counts a worker that has stopped

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.write()
        self._handle = loop.call_later(WRITE_EVERY, self._tick, loop)

    def own(self) -> FamilySet:
        families = self._collect()
        families.merge(self.carried)
        return families

    def write(self) -> None:
        try:
            _write_atomically(self._file, self.own().to_json())
        except Exception:  # a full disk must not take the worker down; /metrics just lags
            log.exception("could not write the metrics snapshot %s", self._file)

    def everyone(self) -> tuple[FamilySet, int]:
        """Live numbers of this worker plus the last snapshot of every other; and how many workers that is."""
        total = self.own()
        workers = 1
        for path in sorted(self.directory.glob("worker-*.json")):
            if path == self._file:
                continue
            try:
                total.merge(FamilySet.from_json(path.read_bytes()))
            except (OSError, ValueError):
                continue  # being replaced right now, or from a worker that never finished writing
            workers += 1
        with contextlib.suppress(OSError, ValueError):
            rejected = json.loads((self.directory / _MASTER_FILE).read_text()).get("reloads_rejected", 0)
            reloads = total.get("frontgate_config_reloads")
            if reloads is not None:
                failed = reloads.samples.get(("failed",), 0.0)
                assert not isinstance(failed, list)
                reloads.samples[("failed",)] = failed + float(rejected)
        return total, workers


_SHARE: WorkerShare | None = None


def start_sharing(gateway: Gateway, index: int) -> None:
    """In each worker, once its gateway runs: share its numbers when a master set up the directory."""
    global _SHARE
    directory = os.environ.get(ENV_DIR)
    if not directory or gateway.metrics is None or not Path(directory).is_dir():
        return
    _SHARE = WorkerShare(Path(directory), index, lambda: collect_worker(gateway))
    _SHARE.start(gateway.loop)


def stop_sharing() -> None:
    if _SHARE is not None:
        _SHARE.stop()


def gateway_families(gateway: Gateway) -> FamilySet:
    """What /metrics and the dashboard show: the sum over all workers when there are several."""
    if _SHARE is not None:
        families, workers = _SHARE.everyone()
    else:
        families, workers = collect_worker(gateway), 1
    families.family("frontgate_workers", "gauge", "Worker processes whose numbers are included.").add(
        (), float(workers))
    return families


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
