"""Blocking work on threads of its own, awaited from the event loop.

Long ingest passes and dataset reads get dedicated threads: they never take all
the workers of the loop's default executor, which short blocking calls
(`asyncio.to_thread`) need.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def start_thread(work: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `work` in a new thread; the future resolves on this event loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as error:  # handed to the awaiting coroutine
            captured = error
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(captured))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def iterate_in_thread(iterator: Iterator[T], name: str, ahead: int = 2) -> AsyncIterator[T]:
    """Advance a blocking iterator on a thread of its own, up to `ahead` items early.

    When the consumer stops (the client went away), the thread stops at its
    next item and is waited for, so the iterator is never used after it is
    closed.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(ahead)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(items.put(entry), loop).result()

    def produce() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                put(("item", item))
            put(("done", None))
        except BaseException as error:
            if not stop.is_set():
                put(("error", error))

    worker = start_thread(produce, name)
    try:
        while True:
            kind, value = await items.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while not worker.done():  # unblock a producer waiting for room, then wait for it
            while not items.empty():
                items.get_nowait()
            await asyncio.wait([worker], timeout=0.05)
