"""A lock shared by every Trainer, on a JetStream key-value bucket.

Two jobs of the same registered model can finish at the same time on two
Trainers. Each reads the champion, compares, and moves the alias; without a
lock, the slower one could replace a better champion that the faster one just
set. KV `create` succeeds for exactly one writer while the key exists, so the
key `champion.<model>` is the lock. Its holder rewrites it every third of the
bucket's TTL while it holds it (scoring the champion can take longer than the
TTL), so the TTL frees it soon after its holder dies and never under a live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runtime.messaging import LOCK_TTL_SECONDS, LOCKS_BUCKET

logger = logging.getLogger("modelyard.trainer.locks")
T = TypeVar("T")

# Beyond the TTL: a waiter outlasts a dead holder's key before it gives up.
WAIT_BEYOND_TTL_SECONDS = 30.0
# A waiter polls at least this often. The lock is free only between one holder's
# release and its next take: with a 1 s back-off, a Trainer waited 25 s while the
# other Trainer of a fault-test burst took the lock 17 times in a row.
MAX_RETRY_DELAY_SECONDS = 0.1


@dataclass
class _Held:
    key: str
    revision: int  # of this holder's last write: the release deletes only that one
    lost: bool = False


async def locks_bucket(js: JetStreamContext) -> KeyValue:
    """The bucket the setup step made (runtime.nats_setup); its TTL is LOCK_TTL_SECONDS."""
    return await js.key_value(LOCKS_BUCKET)


class NatsChampionLock:
    """`hold(model)` from a worker thread; the KV calls run on the event loop."""

    def __init__(
        self,
        bucket: KeyValue,
        loop: asyncio.AbstractEventLoop,
        ttl_seconds: float = LOCK_TTL_SECONDS,  # the bucket's
    ) -> None:
        self._bucket = bucket
        self._loop = loop
        self._renew_every = ttl_seconds / 3
        self._wait_seconds = ttl_seconds + WAIT_BEYOND_TTL_SECONDS
        self._owner = f"{socket.gethostname()}-{os.getpid()}".encode()

    @contextlib.contextmanager
    def hold(self, model_name: str) -> Iterator[None]:
        key = f"champion.{model_name}"
        revision = self._run(self._acquire(key), self._wait_seconds + 10)
        if revision is None:
            yield
            return
        held = _Held(key, revision)
        renewal: asyncio.Task[None] = self._run(self._start_renewal(held), 10)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self._run(self._release(held, renewal), 10)

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    async def _start_renewal(self, held: _Held) -> asyncio.Task[None]:
        return asyncio.create_task(self._renew(held))

    async def _renew(self, held: _Held) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                held.revision = await self._bucket.update(held.key, self._owner, last=held.revision)
            except KeyWrongLastSequenceError:
                # This holder stalled past the TTL and another Trainer holds it now.
                held.lost = True
                logger.warning("champion lock lost while held", extra={"key": held.key})
                return

    async def _release(self, held: _Held, renewal: asyncio.Task[None]) -> None:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        if not held.lost:
            await self._bucket.delete(held.key, last=held.revision)

    async def _acquire(self, key: str) -> int | None:
        """The revision of this holder's key, or None when the wait is over."""
        deadline = time.monotonic() + self._wait_seconds
        delay = 0.02
        while time.monotonic() < deadline:
            try:
                return await self._bucket.create(key, self._owner)
            # KeyNotFoundError: `create` found the key taken, then read it to see whether it
            # was a delete marker, and the holder's entry had expired (TTL) in between
            # (a fault test saw a job fail on it after its Trainer was killed). Free now.
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)
        logger.warning("champion lock not acquired; going on without it", extra={"key": key})
        return None
