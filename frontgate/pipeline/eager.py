"""Run a request's coroutine eagerly: in the caller's stack up to its first real suspension, and only then
as a Task. Most plugin hooks never suspend (a cached token, an in-process counter), so most requests with
plugins need no task at all: the same idea as Python 3.12's eager tasks, which are used when available."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any

_NATIVE_EAGER = sys.version_info >= (3, 12)


def start_eagerly(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    """Start `coro`; return the Task that carries it on, or None when it already finished."""
    if _NATIVE_EAGER:
        task: asyncio.Task[None] = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
        return None if task.done() else task
    try:
        awaited = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_carry_on(coro, awaited))


async def _carry_on(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    """Drive `coro` from where `start_eagerly` left it: wait for what it was waiting for, feed it the result
    (or the exception, cancellation included), until it returns."""
    while True:
        try:
            value = await _wait(awaited)
        except BaseException as error:
            try:
                awaited = coro.throw(error)
            except StopIteration:
                return
            continue
        try:
            awaited = coro.send(value)
        except StopIteration:
            return


def _wait(awaited: Any) -> Any:
    # A coroutine suspends on a Future (awaiting it) or on a bare `yield` (asyncio.sleep(0)). A Future it
    # yielded is marked as blocking; a Task clears that mark when it takes the Future over, as we do here.
    if awaited is None:
        return _yield_once()
    awaited._asyncio_future_blocking = False
    return awaited


@types.coroutine
def _yield_once() -> Generator[None, None, None]:
    yield
