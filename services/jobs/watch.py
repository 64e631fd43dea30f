"""WatchTrainingJob: the job as it is now, then every change until a final state.

Works whichever replica changes the job. A watch subscribes (core NATS) FIRST,
then reads the job from the database and sends it, then follows two subjects:

- the job's event subject, where the Trainers publish: each event is applied
  to the watch's own copy with the state machine the events consumer uses, so
  progress reaches the client without waiting for the database;
- the job's change subject, where whichever replica commits a change to the
  job (events consumer, cancel, deadline watchdog) announces the stored job.

The second closes a gap of the first: an event published just before the
subscription, but committed just after the read, would otherwise be seen by
neither. A change committed after the read is announced after the subscription,
so nothing stored is missed; the state machine is idempotent, so nothing is
sent twice. Core NATS is at-most-once (a reconnect can drop a message), so after
`refresh_seconds` without a message the watch re-reads the database.

Read-your-writes: the last message of a watch is the final job AS STORED. A
Trainer's final event reaches the watch before the events consumer has stored
it; a client that calls GetTrainingJob as soon as its watch ends must not see
the job still RUNNING. So a final state learnt from an event is held back until
the stored job is final too (announced on the change subject, or found by
re-reading the database at growing intervals), and that stored job is sent
instead. Progress events still go out at once: only the end waits, typically a
few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from runtime.errors import unavailable
from runtime.logs import error_fields
from runtime.messaging import job_changes_subject, job_events_subject
from services.jobs import reasons
from services.jobs.consumer import parse_event
from services.jobs.state_machine import Job, apply_event, is_final
from services.jobs.store import JobStore
from services.jobs.validation import job_not_found

logger = logging.getLogger("modelyard.jobs.watch")

FLUSH_TIMEOUT_SECONDS = 2
# First re-read of a final state not yet stored; doubled up to refresh_seconds.
FINAL_REREAD_FIRST_SECONDS = 0.01
_CLOSED = None  # queued to every open watch when the server shuts down


class JobWatcher:
    def __init__(self, nc: NatsClient, store: JobStore, refresh_seconds: float) -> None:
        self._nc = nc
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._queues: set[asyncio.Queue[Msg | None]] = set()
        self._closed = False

    def close(self) -> None:
        """End every open watch (with UNAVAILABLE, so clients reconnect elsewhere)."""
        self._closed = True
        for queue in self._queues:
            queue.put_nowait(_CLOSED)

    async def watch(self, job_id: str) -> AsyncGenerator[Job, None]:
        queue: asyncio.Queue[Msg | None] = asyncio.Queue()

        async def on_message(message: Msg) -> None:
            queue.put_nowait(message)

        subscriptions = [
            await self._nc.subscribe(subject, cb=on_message)
            for subject in (job_events_subject(job_id), job_changes_subject(job_id))
        ]
        self._queues.add(queue)
        try:
            await self._flush()
            current = await self._store.get(job_id)
            if current is None:
                raise job_not_found(job_id)
            job = current.job
            yield job
            while not is_final(job.state):
                updated = await self._next_change(job_id, job, queue)
                if updated is None:
                    continue
                if is_final(updated.job.state) and not updated.from_store:
                    updated = await self._stored_final(job_id, queue)
                job = updated.job
                yield job
        finally:
            self._queues.discard(queue)
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def announce(self, job: Job) -> None:
        """Tell the watches of every replica that the stored job changed (best effort:
        a watch that misses it catches up when it re-reads)."""
        try:
            await self._nc.publish(job_changes_subject(job.job_id), job.SerializeToString())
        except Exception as error:
            logger.warning("job change not announced", extra=error_fields(error))

    async def _flush(self) -> None:
        """Make sure the server has our subscription before we read the job."""
        try:
            await self._nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)
        except Exception as error:  # NATS reconnecting: the periodic re-read covers us
            logger.warning("watch subscription not confirmed", extra=error_fields(error))

    async def _next_change(
        self, job_id: str, job: Job, queue: asyncio.Queue[Msg | None]
    ) -> Update | None:
        """The job after the next event or re-read, or None when nothing changed."""
        message = await self._next_message(queue, self._refresh_seconds)
        if message is None:
            return _stored(await self._reread(job_id, job))
        if message.subject == job_changes_subject(job_id):
            return _stored(_if_ahead(_parse_job(message.data, type(job)), job))
        event = parse_event(message)
        applied = None if event is None else apply_event(job, event)
        return None if applied is None else Update(applied, from_store=False)

    async def _stored_final(self, job_id: str, queue: asyncio.Queue[Msg | None]) -> Update:
        """Wait until the store holds a final state for the job, and return it as stored."""
        wait = FINAL_REREAD_FIRST_SECONDS
        while True:
            current = await self._store.get(job_id)
            if current is None:
                raise job_not_found(job_id)
            if is_final(current.job.state):
                return Update(current.job, from_store=True)
            message = await self._next_message(queue, wait)
            if message is not None and message.subject == job_changes_subject(job_id):
                announced = _parse_job(message.data, type(current.job))
                if announced is not None and is_final(announced.state):
                    return Update(announced, from_store=True)
            wait = min(wait * 2, self._refresh_seconds)

    async def _next_message(self, queue: asyncio.Queue[Msg | None], within: float) -> Msg | None:
        """The next NATS message of the watch, or None after `within` seconds without one."""
        if self._closed:
            raise unavailable(
                reasons.SERVER_SHUTTING_DOWN, "the server is shutting down; watch again"
            )
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation of a call whose client went away.
            async with asyncio.timeout(within):
                message = await queue.get()
        except TimeoutError:
            return None
        if message is _CLOSED:
            raise unavailable(
                reasons.SERVER_SHUTTING_DOWN, "the server is shutting down; watch again"
            )
        return message

    async def _reread(self, job_id: str, job: Job) -> Job | None:
        current = await self._store.get(job_id)
        return None if current is None else _if_ahead(current.job, job)


@dataclass(frozen=True)
class Update:
    """The watched job after a change, and whether it is the stored job (readable by
    GetTrainingJob) or the watch's own copy with a Trainer event applied."""

    job: Job
    from_store: bool


def _stored(job: Job | None) -> Update | None:
    return None if job is None else Update(job, from_store=True)


def _parse_job(data: bytes, kind: type[Job]) -> Job | None:
    """A job announced on its change subject, of the kind the watch follows."""
    try:
        return kind.FromString(data)
    except DecodeError:
        return None


def _if_ahead(stored: Job | None, job: Job) -> Job | None:
    """The stored job when it is ahead of the watch's copy, else None."""
    if stored is None or stored == job:
        return None
    if is_final(stored.state) or _seconds(stored.update_time) > _seconds(job.update_time):
        return stored
    return None


def _seconds(timestamp: Timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9
