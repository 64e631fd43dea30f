"""The champion lock's retry rule (services/training/work/locks.py), on a bucket
that answers as JetStream's does in the races a real server shows only rarely."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from services.training.work.locks import NatsChampionLock


class RacingBucket:
    """`create` fails with each error in turn, then hands out revision 7."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.deleted: list[tuple[str, int | None]] = []

    async def create(self, key: str, value: bytes) -> int:
        if self.failures:
            raise self.failures.pop(0)
        return 7

    async def delete(self, key: str, last: int | None = None) -> bool:
        self.deleted.append((key, last))
        return True


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_a_lock_whose_holder_expired_mid_create_is_taken_not_failed(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # nats-py's create: update(last=0) fails (key held), then its get finds the key gone
    # (the holder's entry expired in between) and raises KeyNotFoundError.
    bucket = RacingBucket([KeyWrongLastSequenceError(), KeyNotFoundError()])
    lock = NatsChampionLock(bucket, loop)  # type: ignore[arg-type]
    with lock.hold("iris-species"):
        assert not bucket.failures  # both races were waited out
    assert bucket.deleted == [("champion.iris-species", 7)]
