"""A lock shared by every Trainer, on a JetStream key-value bucket.

Two jobs of the same registered model can finish at the same time on two
Trainers. Each reads the champion, compares, and moves the alias; without a
lock, the slower one could replace a better champion that the faster one just
set. KV `create` succeeds for exactly one writer while the key exists, so the
key `champion.<model>` is the lock; its TTL frees it if its holder dies.
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
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runtime.messaging import LOCK_TTL_SECONDS, LOCKS_BUCKET

logger = logging.getLogger("modelyard.trainer.locks")

# Longer than the TTL: a lock whose holder died is always given up on.
WAIT_SECONDS = LOCK_TTL_SECONDS + 30.0


async def locks_bucket(js: JetStreamContext) -> KeyValue:
    """The bucket the setup step made (runtime.nats_setup); its TTL is LOCK_TTL_SECONDS."""
    return await js.key_value(LOCKS_BUCKET)


class NatsChampionLock:
    """`hold(model)` from a worker thread; the KV calls run on the event loop."""

    def __init__(self, bucket: KeyValue, loop: asyncio.AbstractEventLoop) -> None:
        self._bucket = bucket
        self._loop = loop
        self._owner = f"{socket.gethostname()}-{os.getpid()}".encode()

    @contextlib.contextmanager
    def hold(self, model_name: str) -> Iterator[None]:
        key = f"champion.{model_name}"
        revision = self._run(self._acquire(key), WAIT_SECONDS + 10)
        try:
            yield
        finally:
            if revision is not None:
                with contextlib.suppress(Exception):
                    self._run(self._bucket.delete(key, last=revision), 10)

    def _run(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> int | None:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        result = future.result(timeout)
        return result if isinstance(result, int) else None

    async def _acquire(self, key: str) -> int | None:
        deadline = time.monotonic() + WAIT_SECONDS
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                return await self._bucket.create(key, self._owner)
            # KeyNotFoundError: `create` found the key taken, then read it to see whether it
            # was a delete marker, and the holder's entry had expired (TTL) in between
            # (a fault test saw a job fail on it after its Trainer was killed). Free now.
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        logger.warning("champion lock not acquired; going on without it", extra={"key": key})
        return None
