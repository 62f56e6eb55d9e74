"""CPU cost of frontgate's own code per proxied request, without sockets or a kernel in the way.

The client and upstream connections get in-memory transports: a request is fed in, the upstream head
the gateway writes is answered with a canned response, and the client's answer is checked. What remains
is our Python per request (parsing, routing, plugins, pool, framing), measured with process time, so
other load on the machine barely moves it. Use it to compare commits; use bench/run.sh against nginx.

Observability work that is deferred (access-log lines and metrics counted in batches, the writer thread's
writes, the export thread making spans of sampled requests) happens partly inside the measured loop and
partly after it. The second line printed adds what was still waiting when the loop ended, finished at once,
so a config with observability on is measured with all of its cost.

    .venv/bin/python bench/hotpath.py [CONFIG] [REQUESTS]
    BENCH_PROFILE=30 .venv/bin/python bench/hotpath.py CONFIG   # the 30 costliest functions instead
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import uvloop

from frontgate.server.connection import HttpConnection
from frontgate.server.gateway import Gateway
from frontgate.upstream.connection import UpstreamConnection

# BENCH_HEADER (as for bench/run.sh) adds one header, e.g. a token for an auth config.
_EXTRA = os.environ.get("BENCH_HEADER", "").encode()
REQUEST = (b"GET /plain HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
           + (_EXTRA + b"\r\n" if _EXTRA else b"") + b"\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 28 Nov 2026 00:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


class MemoryTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self._peer = peer
        self._closing = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def main(config: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    gateway = Gateway.from_files([config], loop)
    upstreams: list[tuple[UpstreamConnection, MemoryTransport]] = []
    for target in (t for c in gateway.runtime.clusters.values() for t in c.targets):
        transport = MemoryTransport(("127.0.0.1", 9))
        upstream = UpstreamConnection()
        upstream.connection_made(transport)
        target.pool.release(upstream, True)  # a warm keep-alive connection per target, as under load
        upstreams.append((upstream, transport))
    client_transport = MemoryTransport(("127.0.0.1", 40000))
    client = HttpConnection(gateway)
    client.connection_made(client_transport)

    def one() -> None:
        client.data_received(REQUEST)
        for upstream, transport in upstreams:  # answer on whichever target the balancer chose
            if transport.written:
                transport.written.clear()
                upstream.data_received(RESPONSE)
                break
        else:
            raise AssertionError("the request did not reach an upstream")
        assert client_transport.written[-1].endswith(b"ok\n")
        client_transport.written.clear()

    for _ in range(2000):
        one()
    if os.environ.get("BENCH_PROFILE"):  # where the time goes, by function (cProfile inflates every call)
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(lambda: [one() for _ in range(count)])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(int(os.environ["BENCH_PROFILE"]))
        return
    started = time.process_time()
    for _ in range(count):
        one()
    elapsed = time.process_time() - started
    print(f"{config}: {elapsed / count * 1e6:.1f} us of CPU per proxied request ({count} requests)")
    if gateway.record_tries:
        elapsed += finish_deferred(gateway)
        print(f"{config}: {elapsed / count * 1e6:.1f} us with the deferred observability work finished")


def finish_deferred(gateway: Gateway) -> float:
    """Process time to finish the accounting the loop left waiting: the last batch, the log writes, and the
    export thread's span encoding for the sampled requests still queued (not the export itself: with no
    collector listening it is a refused connection)."""
    started = time.process_time()
    gateway.observations.flush()
    gateway.access_log.wait_written(10.0)
    if gateway.tracer is not None:
        exporter = gateway.tracer._exporter
        queue = exporter.queue  # the export thread empties it as it makes the spans
        deadline = time.monotonic() + 15.0
        while queue and time.monotonic() < deadline:
            exporter.retry_at = 0.0  # no collector listening: the next batch now, not after the backoff
            exporter.wake.set()
            time.sleep(0.02)  # a coarse poll: its own CPU must not count
    return time.process_time() - started


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "bench/hotpath.yaml"
    uvloop.run(main(path, int(sys.argv[2]) if len(sys.argv) > 2 else 50000))
