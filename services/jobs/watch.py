"""WatchTrainingJob: the job as it is now, then every change until a final state.

Works whichever replica applies the events: the watch subscribes (core NATS)
to the job's event subject FIRST, then reads the job from the database and
sends it, then applies each event it receives to its own copy with the same
state machine the events consumer uses, sending the copy whenever it changed.
An event that the database copy already reflects changes nothing (the state
machine is idempotent), so the subscribe-then-read order loses nothing and
repeats nothing. Core NATS is at-most-once (a reconnect can drop a message), so
after `refresh_seconds` without an event the watch re-reads the database and
catches up if the stored job is ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.errors import not_found, unavailable
from runtime.messaging import job_events_subject
from services.jobs.consumer import parse_event
from services.jobs.state_machine import apply_event, is_final
from services.jobs.store import JobStore

logger = logging.getLogger("modelyard.jobs.watch")

FLUSH_TIMEOUT_SECONDS = 2
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

    async def watch(self, job_id: str) -> AsyncIterator[TrainingJob]:
        queue: asyncio.Queue[Msg | None] = asyncio.Queue()

        async def on_message(message: Msg) -> None:
            queue.put_nowait(message)

        subscription = await self._nc.subscribe(job_events_subject(job_id), cb=on_message)
        self._queues.add(queue)
        try:
            await self._flush()
            current = await self._store.get(job_id)
            if current is None:
                raise not_found("JOB_NOT_FOUND", f"training job {job_id} does not exist")
            job = current.job
            yield job
            while not is_final(job.state):
                updated = await self._next_change(job_id, job, queue)
                if updated is not None:
                    job = updated
                    yield job
        finally:
            self._queues.discard(queue)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _flush(self) -> None:
        """Make sure the server has our subscription before we read the job."""
        try:
            await self._nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)
        except Exception as error:  # NATS reconnecting: the periodic re-read covers us
            logger.warning("watch subscription not confirmed", extra={"error": str(error)})

    async def _next_change(
        self, job_id: str, job: TrainingJob, queue: asyncio.Queue[Msg | None]
    ) -> TrainingJob | None:
        """The job after the next event or re-read, or None when nothing changed."""
        if self._closed:
            raise unavailable("SERVER_SHUTTING_DOWN", "the server is shutting down; watch again")
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation of a call whose client went away.
            async with asyncio.timeout(self._refresh_seconds):
                message = await queue.get()
        except TimeoutError:
            return await self._reread(job_id, job)
        if message is _CLOSED:
            raise unavailable("SERVER_SHUTTING_DOWN", "the server is shutting down; watch again")
        event = parse_event(message)
        return None if event is None else apply_event(job, event)

    async def _reread(self, job_id: str, job: TrainingJob) -> TrainingJob | None:
        current = await self._store.get(job_id)
        if current is None or current.job == job:
            return None
        stored = current.job
        if is_final(stored.state) or _seconds(stored.update_time) > _seconds(job.update_time):
            return stored
        return None


def _seconds(timestamp: Timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9
