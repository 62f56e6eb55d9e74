"""Eager starts: a coroutine that never waits finishes in the caller; one that waits carries on in a task,
with results, exceptions and cancellation delivered as a plain Task would."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from frontgate.pipeline.eager import start_eagerly


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_coroutine_that_never_waits_needs_no_task(run: object) -> None:
    done: list[str] = []

    async def quick() -> None:
        done.append("ran")

    async def main() -> None:
        assert start_eagerly(quick(), asyncio.get_running_loop()) is None
        assert done == ["ran"]  # already, before any await of ours

    run(main())  # type: ignore[operator]


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_waiting_coroutine_carries_on_with_results_errors_and_cancellation(run: object) -> None:
    seen: list[object] = []

    async def inner() -> int:
        await asyncio.sleep(0.01)
        return 5

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def waits() -> None:
        seen.append(await asyncio.wait_for(inner(), 1))
        await asyncio.sleep(0)
        try:
            await failing()
        except ValueError as error:
            seen.append(str(error))
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        task = start_eagerly(waits(), asyncio.get_running_loop())
        assert task is not None
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())  # type: ignore[operator]
    assert seen == [5, "boom", "cancelled"]
