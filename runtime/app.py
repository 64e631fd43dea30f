"""The one shape of every modelyard process: an app object used as `async with`.

An app opens its parts in order (database, NATS, background loops, the gRPC
server last) and registers how to close each one on an `AsyncExitStack` as it
goes, so closing undoes exactly what was opened, in reverse, whether start
finished or failed half-way. The server, opened last, is stopped first: health
turns NOT_SERVING, calls in flight get `shutdown_grace_seconds`, and only then
do the loops and connections behind them close.

    class JobsApp(App):
        async def _open(self, stack: AsyncExitStack) -> None:
            engine = create_engine(...)
            stack.push_async_callback(engine.dispose)
            ...

    async with JobsApp(settings):          # tests, in-process
        ...
    run_process("jobs", settings, JobsApp)  # `python -m services.jobs`, until SIGTERM

`close()` may be called any number of times; only the first does anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

from runtime.logs import configure_logging, error_fields
from runtime.memory import freeze_startup_objects
from runtime.secrets import private_directory
from runtime.server import wait_for_shutdown_signal
from runtime.settings import CommonSettings
from runtime.tracing import configure_tracing, shutdown_tracing

logger = logging.getLogger("modelyard.app")

S = TypeVar("S", bound=CommonSettings)

CANCEL_ROUNDS = 10
CANCEL_ROUND_SECONDS = 1.0


class StartupError(Exception):
    """The process cannot start; the message says what to fix (it exits with 1)."""


class App:
    """Subclasses implement `_open`; users call `start`/`close` or use `async with`."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._started = False
        self._closed = False

    async def _open(self, stack: AsyncExitStack) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
        if self._started:
            raise RuntimeError(f"{type(self).__name__} was already started")
        self._started = True
        try:
            await self._open(self._stack)
        except BaseException:
            await self.close()  # undo what was opened before the failure
            raise
        return self

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stack.aclose()

    def _background(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a loop of the process until it closes (the loop is cancelled then); a loop
        that ends on its own is logged as critical: it should never."""
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_report_death)
        self._stack.push_async_callback(cancel_and_wait, task)
        return task

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait for them. A cancellation can be swallowed (nats-py waits
    with asyncio.wait_for, which on Python 3.11 may lose a cancel that races a
    timeout), so whatever is still running is cancelled again, a few rounds at most."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(CANCEL_ROUNDS):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_ROUND_SECONDS)
    if pending:
        logger.error("tasks did not stop", extra={"tasks": [task.get_name() for task in pending]})


def _report_death(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    logger.critical(
        "background loop %s stopped", task.get_name(), exc_info=error if error else None
    )


async def serve_until_signal(app: App) -> None:
    """Run `app` until SIGTERM or SIGINT, then close it."""
    async with app:
        freeze_startup_objects()
        await wait_for_shutdown_signal()


def run_process(
    service: str,
    settings: S,
    make_app: Callable[[S], App],
    prepare: Callable[[S], None] | None = None,
) -> None:
    """`python -m <process>`: logging and tracing set up (then `prepare`, for what a
    process adds to them), the app served until a signal; a StartupError is logged as
    such and ends the process with exit code 1."""
    configure_logging(service, settings.log_level)
    configure_tracing(service, settings.otlp_endpoint)
    # What a process writes (SQLite databases, blobs, generated secrets, scratch files) is
    # its owner's alone, and so is the state directory.
    os.umask(0o077)
    private_directory(settings.state_dir)
    if prepare is not None:
        prepare(settings)
    try:
        asyncio.run(serve_until_signal(make_app(settings)))
    except StartupError as error:
        logger.critical("cannot start: %s", error, extra=error_fields(error))
        sys.exit(1)
    finally:
        shutdown_tracing()
