"""The Redis store against a real server on a free port: exact counts, bounded failure, fast recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import uvloop

from frontgate.store import DecisionPlan, RateRule, StoreUnavailable
from frontgate.store.redis_cluster import ClusterStore
from frontgate.store.redis_store import RedisStore
from tests.integration.helpers import free_port
from tests.integration.redis_helpers import RedisServer, server_binary

T = TypeVar("T")
TIMEOUT = 0.05


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(factory(), 30)

    return uvloop.run(main())


async def wait_until_up(store: RedisStore | ClusterStore, within: float) -> float:
    started = time.monotonic()
    while not store.up:
        assert time.monotonic() - started < within, f"store not back within {within}s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def test_exactly_n_of_n_plus_k_are_admitted_through_redis(redis: RedisServer) -> None:
    async def scenario() -> list[bool]:
        store = RedisStore(redis.url, TIMEOUT)
        await store.start()
        plan = DecisionPlan((RateRule.of(20, 3600),))
        try:
            return [(await store.decide(plan, [b"k"])).allowed for _ in range(25)]
        finally:
            await store.close()

    assert run(scenario) == [True] * 20 + [False] * 5


def test_concurrent_decisions_are_pipelined_and_still_exact(redis: RedisServer) -> None:
    async def scenario() -> int:
        stores = [RedisStore(redis.url, 0.5) for _ in range(3)]
        for store in stores:
            await store.start()
        plan = DecisionPlan((RateRule.of(100, 3600),))
        try:
            verdicts = await asyncio.gather(*(stores[i % 3].decide(plan, [b"shared"]) for i in range(600)))
            return sum(v.allowed for v in verdicts)
        finally:
            for store in stores:
                await store.close()

    assert run(scenario) == 100


def test_all_limits_of_a_request_are_decided_together(redis: RedisServer) -> None:
    async def scenario() -> tuple[int, list[int]]:
        store = RedisStore(redis.url, TIMEOUT)
        await store.start()
        plan = DecisionPlan((RateRule.of(100, 60), RateRule.of(3, 60)))
        try:
            count = sum([(await store.decide(plan, [b"wide", b"narrow"])).allowed for _ in range(10)])
            last = await store.decide(plan, [b"wide", b"narrow"])
            return count, last.remaining
        finally:
            await store.close()

    count, remaining = run(scenario)
    assert count == 3
    assert remaining == [97, 0]


def test_a_frozen_redis_fails_decisions_within_the_timeout_then_fast_and_recovers_within_a_second(
        redis: RedisServer) -> None:
    async def scenario() -> tuple[float, float, float]:
        store = RedisStore(redis.url, TIMEOUT)
        await store.start()
        plan = DecisionPlan((RateRule.of(1000, 1),))
        await store.decide(plan, [b"k"])
        redis.pause()
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(store.decide(plan, [b"k"]) for _ in range(50)),
                                           return_exceptions=True)
            first_wave = time.monotonic() - started
            assert all(isinstance(r, StoreUnavailable) for r in results)
            started = time.monotonic()
            for _ in range(200):
                with pytest.raises(StoreUnavailable):
                    await store.decide(plan, [b"k"])
            fast = (time.monotonic() - started) / 200
            await asyncio.sleep(1.0)  # reconnect attempts go on meanwhile, in the background
        finally:
            redis.resume()
        recovered = await wait_until_up(store, 1.0)
        assert (await store.decide(plan, [b"k"])).allowed
        await store.close()
        return first_wave, fast, recovered

    first_wave, fast, recovered = run(scenario)
    assert first_wave < TIMEOUT + 0.05
    assert fast < TIMEOUT / 10  # fails at once, never waiting out store.timeout
    assert recovered < 1.0


def test_a_restarted_redis_is_used_again_within_a_second(redis: RedisServer) -> None:
    async def scenario() -> float:
        store = RedisStore(redis.url, TIMEOUT)
        await store.start()
        plan = DecisionPlan((RateRule.of(2, 3600),))
        await store.decide(plan, [b"k"])
        redis.kill()
        await asyncio.sleep(0.1)
        with pytest.raises(StoreUnavailable):
            await store.decide(plan, [b"k"])
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis.start)
        recovered = await wait_until_up(store, 1.0)
        verdicts = [(await store.decide(plan, [b"k"])).allowed for _ in range(3)]
        assert verdicts == [True, True, False]  # scripts reloaded, limiting resumed
        await store.close()
        return recovered

    assert run(scenario) < 1.0


def test_redis_down_at_start_up_does_not_block_and_is_picked_up_later(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "late")

    async def scenario() -> float:
        store = RedisStore(server.url, TIMEOUT)
        started = time.monotonic()
        await store.start()
        assert time.monotonic() - started < 1.5
        with pytest.raises(StoreUnavailable):
            await store.decide(DecisionPlan((RateRule.of(1, 1),)), [b"k"])
        await asyncio.to_thread(server.start)
        recovered = await wait_until_up(store, 1.0)
        await store.close()
        return recovered

    try:
        assert run(scenario) < 1.0
    finally:
        server.stop()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def start_slow_relay(target_port: int, delay: float) -> asyncio.Server:
    """A TCP relay to Redis that holds every new connection for `delay` before passing bytes: a slow connect."""
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    return await asyncio.start_server(relay, "127.0.0.1", 0)


def test_requests_arriving_while_the_first_connection_is_made_wait_for_it_and_are_counted(
        redis: RedisServer) -> None:
    async def scenario() -> list[bool]:
        relay = await start_slow_relay(redis.port, 0.15)
        port = relay.sockets[0].getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}", TIMEOUT)  # the connect takes three times store.timeout
        starting = asyncio.get_running_loop().create_task(store.start())
        plan = DecisionPlan((RateRule.of(3, 3600),))
        verdicts = await asyncio.gather(*(store.decide(plan, [b"early"]) for _ in range(5)))
        await starting
        await store.close()
        relay.close()
        return [v.allowed for v in verdicts]

    assert run(scenario) == [True, True, True, False, False]


def test_flushed_scripts_are_sent_again_within_the_same_decision(redis: RedisServer) -> None:
    async def scenario() -> bool:
        store = RedisStore(redis.url, TIMEOUT)
        await store.start()
        await asyncio.to_thread(redis.command, b"SCRIPT", b"FLUSH")
        try:
            return (await store.decide(DecisionPlan((RateRule.of(5, 60),)), [b"k"])).allowed
        finally:
            await store.close()

    assert run(scenario)


def test_concurrency_slots_are_shared_by_every_gateway_and_released(redis: RedisServer) -> None:
    async def scenario() -> None:
        one, two = RedisStore(redis.url, TIMEOUT), RedisStore(redis.url, TIMEOUT)
        await one.start()
        await two.start()
        plan = DecisionPlan((), (2,))
        first = await one.decide(plan, [b"slot"])
        second = await two.decide(plan, [b"slot"])
        third = await one.decide(plan, [b"slot"])
        assert first.allowed and second.allowed and not third.allowed
        assert first.token is not None
        one.release(plan, [b"slot"], first.token)
        await asyncio.sleep(0.05)
        assert (await two.decide(plan, [b"slot"])).allowed
        await one.close()
        await two.close()

    run(scenario)


def test_sentinel_urls_find_the_master(redis: RedisServer, tmp_path: Path) -> None:
    import subprocess

    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {redis.port} 1\n")
    sentinel = subprocess.Popen([server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    async def scenario() -> list[bool]:
        store = RedisStore(f"redis+sentinel://127.0.0.1:{port}/main", TIMEOUT)
        await store.start()
        await wait_until_up(store, 5.0)
        plan = DecisionPlan((RateRule.of(2, 60),))
        try:
            return [(await store.decide(plan, [b"k"])).allowed for _ in range(3)]
        finally:
            await store.close()

    try:
        assert run(scenario) == [True, True, False]
    finally:
        sentinel.kill()
        sentinel.wait(5)


def test_cluster_urls_decide_across_hash_slots(tmp_path: Path) -> None:
    import subprocess

    port = free_port()
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    node = subprocess.Popen(
        [server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-port", str(free_port()), "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--cluster-config-file", str(workdir / "nodes.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = RedisServer(workdir, port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                server.command(b"PING")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert server.command(b"CLUSTER", b"ADDSLOTSRANGE", b"0", b"16383").startswith(b"+OK")
        while b"cluster_state:ok" not in server.command(b"CLUSTER", b"INFO"):
            assert time.monotonic() < deadline
            time.sleep(0.05)

        async def scenario() -> tuple[list[bool], list[int]]:
            store = ClusterStore(f"redis+cluster://127.0.0.1:{port}", 0.5)
            await store.start()
            await wait_until_up(store, 5.0)
            plan = DecisionPlan((RateRule.of(100, 60), RateRule.of(2, 60)), (5,))
            try:
                allowed = [(await store.decide(plan, [b"a", b"b", b"c"])).allowed for _ in range(3)]
                last = await store.decide(plan, [b"a", b"b", b"c"])
                return allowed, last.remaining
            finally:
                await store.close()

        allowed, remaining = run(scenario)
        assert allowed == [True, True, False]
        assert remaining[1] == 0
    finally:
        node.kill()
        node.wait(5)
