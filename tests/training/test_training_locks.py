"""The champion lock (services/training/work/locks.py): its retry rule on a bucket
that answers as JetStream's does in the races a real server shows only rarely, and
its renewal and expiry on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from devstack.components import NatsServer
from runtime.messaging import close_quietly, connect
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


# -- against a real nats-server ---------------------------------------------------------

SHORT_TTL_SECONDS = 1.5


@pytest.fixture
async def short_ttl_bucket(nats_server: NatsServer) -> AsyncIterator[KeyValue]:
    """A lock bucket of its own with a TTL short enough to outlast in a test."""
    client = await connect(nats_server.url, "locks-test", nats_server.credentials())
    js = client.jetstream()
    name = f"locks-test-{time.monotonic_ns()}"
    bucket = await js.create_key_value(KeyValueConfig(bucket=name, ttl=SHORT_TTL_SECONDS))
    yield bucket
    await js.delete_key_value(name)
    await close_quietly(client)


async def test_a_live_holder_keeps_the_lock_past_the_ttl_and_frees_it_on_release(
    short_ttl_bucket: KeyValue,
) -> None:
    running_loop = asyncio.get_running_loop()
    lock = NatsChampionLock(short_ttl_bucket, running_loop, SHORT_TTL_SECONDS)
    seen_while_held: list[bytes] = []

    def hold_and_look() -> None:
        with lock.hold("iris-species"):
            time.sleep(SHORT_TTL_SECONDS * 2.5)  # scoring the champion, slower than the TTL
            entry = asyncio.run_coroutine_threadsafe(
                short_ttl_bucket.get("champion.iris-species"), running_loop
            ).result(5)
            seen_while_held.append(entry.value or b"")

    await asyncio.to_thread(hold_and_look)
    assert seen_while_held, "the hold ended early"
    assert seen_while_held[0].endswith(str(os.getpid()).encode())
    with pytest.raises(KeyNotFoundError):
        await short_ttl_bucket.get("champion.iris-species")  # released, not left to expire


async def test_a_dead_holders_lock_is_taken_within_the_ttl(short_ttl_bucket: KeyValue) -> None:
    await short_ttl_bucket.create("champion.iris-species", b"killed-trainer")  # never renewed
    lock = NatsChampionLock(short_ttl_bucket, asyncio.get_running_loop(), SHORT_TTL_SECONDS)
    started = time.monotonic()

    def take() -> None:
        with lock.hold("iris-species"):
            pass

    await asyncio.to_thread(take)
    # The waiter tries every 0.1 s at most; JetStream expires a key within ~1 s.
    assert time.monotonic() - started < SHORT_TTL_SECONDS + 2.5
