"""A worker thread fed through a bounded queue: one stage of a pipeline.

The conversion parses CSV on one thread while profiling and Parquet writing
each run on a stage of their own, so the three overlap on the machine's
cores (Arrow's kernels release the GIL). The bound keeps memory flat: a slow
stage makes the parser wait.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class Stage(Generic[T]):
    def __init__(self, work: Callable[[T], None], name: str, max_pending: int = 1) -> None:
        self._work = work
        self._items: queue.Queue[object] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Stage[T]:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._stopped.set()  # the caller failed: drop what is queued
        self._put(_DONE)
        self._thread.join()
        if exc is None:
            self.raise_if_failed()

    def submit(self, item: T) -> None:
        """Queue `item` (waiting while the stage is busy); raises the stage's own error."""
        self.raise_if_failed()
        self._put(item)

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _put(self, item: object) -> None:
        while True:
            if self._error is not None and item is not _DONE:
                raise self._error
            try:
                self._items.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    return

    def _run(self) -> None:
        while (item := self._items.get()) is not _DONE:
            if self._error is not None or self._stopped.is_set():
                continue  # keep draining so that the producer never blocks
            try:
                self._work(item)  # type: ignore[arg-type]
            except BaseException as error:
                self._error = error
