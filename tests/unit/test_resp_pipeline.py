"""The pipelined RESP connection on a fake transport, and the Redis URL forms. No sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from frontgate.store import DecisionPlan, RateRule, StoreUnavailable
from frontgate.store.lua import DECIDE_SHA
from frontgate.store.redis_store import RedisTarget, encode_plan, parse_verdict
from frontgate.store.resp import RespConnection, command


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Any:
    """Both event loops: uvloop's handles differ from asyncio's (a zero-delay timer is a plain Handle)."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        self.aborted = True


def connected(loop: asyncio.AbstractEventLoop, lost: list[RespConnection]) -> tuple[RespConnection, FakeTransport]:
    conn = RespConnection(loop, lost.append)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def test_commands_of_one_loop_iteration_go_out_in_one_write_and_replies_match_in_order(run: Any) -> None:
    async def scenario() -> tuple[list[Any], list[bytes]]:
        loop = asyncio.get_running_loop()
        conn, transport = connected(loop, [])
        deadline = loop.time() + 60
        futures = [conn.send(command(b"GET", b"k%d" % i), deadline) for i in range(3)]
        await asyncio.sleep(0)
        conn.data_received(b":0\r\n$1\r\na")  # replies may arrive split anywhere
        conn.data_received(b"\r\n*2\r\n:1\r\n:2\r\n")
        return [await f for f in futures], transport.writes

    replies, writes = run(scenario())
    assert replies == [0, b"a", [1, 2]]
    assert len(writes) == 1
    assert writes[0].count(b"GET") == 3


def test_a_command_past_its_deadline_fails_every_waiter_and_drops_the_connection(run: Any) -> None:
    async def scenario() -> tuple[list[BaseException | None], bool, int]:
        loop = asyncio.get_running_loop()
        lost: list[RespConnection] = []
        conn, transport = connected(loop, lost)
        late = conn.send(command(b"PING"), loop.time() - 1)
        later = conn.send(command(b"PING"), loop.time() + 60)
        for _ in range(10):  # the watchdog allows the sockets one more poll before it gives up
            await asyncio.sleep(0)
        results = [f.exception() if f.done() else None for f in (late, later)]
        after = conn.send(command(b"PING"), loop.time() + 60)
        assert isinstance(after.exception(), StoreUnavailable)
        return results, transport.aborted, len(lost)

    results, aborted, lost = run(scenario())
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert aborted and lost == 1


def test_a_late_reply_already_on_the_socket_is_taken_before_the_watchdog_gives_up(run: Any) -> None:
    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        conn, transport = connected(loop, [])
        late = conn.send(command(b"PING"), loop.time() - 1)  # the loop was busy past the deadline
        await asyncio.sleep(0)
        other = conn.send(command(b"PING"), loop.time() + 60)  # queued while the watchdog takes a second look
        conn.data_received(b"+PONG\r\n+PONG\r\n")  # the poll that follows the timers finds the replies
        for _ in range(5):
            await asyncio.sleep(0)
        assert not transport.aborted
        return [await late, await other]

    assert run(scenario()) == [b"PONG", b"PONG"]


def test_an_unexpected_reply_drops_the_connection(run: Any) -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        conn, transport = connected(loop, [])
        conn.data_received(b"+OK\r\n")
        return transport.aborted and conn.closed

    assert run(scenario())


def test_a_decision_is_one_evalsha_with_the_rules_precomputed() -> None:
    plan = DecisionPlan((RateRule.of(100, 1, 20),))
    head, tail = encode_plan(plan)
    assert DECIDE_SHA in head
    assert b"$5\r\n10000\r\n" in tail  # interval: 10 ms
    assert b"$7\r\n1200000\r\n" in tail  # tolerance: 120 x 10 ms


def test_a_malformed_or_refused_decision_is_a_store_failure() -> None:
    with pytest.raises(StoreUnavailable):
        parse_verdict([1, 0], 1)
    verdict = parse_verdict([0, 5_000_000, 1, 0, 7_000_000], 1)
    assert not verdict.allowed and verdict.retry_after_us == 5_000_000 and verdict.denied == 1


def test_redis_urls_are_understood() -> None:
    plain = RedisTarget.from_url("redis://user:pw@10.0.0.5:6380/3")
    assert (plain.host, plain.port, plain.db, plain.username, plain.password) == ("10.0.0.5", 6380, 3, "user", "pw")
    assert plain.tls is None
    assert RedisTarget.from_url("rediss://h:6379/0?ssl_cert_reqs=none").tls is not None
    assert RedisTarget.from_url("unix:///run/redis.sock?db=2").path == "/run/redis.sock"
    sentinel = RedisTarget.from_url("redis+sentinel://:pw@s1:26379,s2:26380/main/4")
    assert sentinel.sentinels == (("s1", 26379), ("s2", 26380))
    assert (sentinel.service, sentinel.db, sentinel.password) == ("main", 4, "pw")
    with pytest.raises(ValueError):
        RedisTarget.from_url("redis+sentinel://s1:26379")
