"""The outbox relay: publishes outbox rows to NATS and marks them published.

It runs in every replica. It is woken at once by a commit in its own process
(`wake()`), on PostgreSQL by LISTEN/NOTIFY for commits in other replicas (a
trigger on the outbox notifies), and otherwise polls every
`outbox_poll_seconds` (the only mechanism on SQLite). On PostgreSQL, rows are
claimed with `SELECT … FOR UPDATE SKIP LOCKED`, so replicas share the work
without publishing the same row at the same time.

Rows of one job are published in order; different jobs are published
concurrently. A row that fails to publish (NATS restarting, say) stays
unpublished and is retried after a back-off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind
from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runtime.db import is_postgresql
from runtime.logs import error_fields
from runtime.messaging import (
    JOB_EVENTS_STREAM,
    TRAINING_REQUESTS_STREAM,
    TRAINING_REQUESTS_SUBJECT,
    job_events_subject,
)
from runtime.tracing import context_from_headers, headers_with_context, tracer
from services.jobs.backoff import Backoff
from services.jobs.outbox import OutboxEntry, OutboxKind
from services.jobs.pg_hot_path import asyncpg_dsn
from services.jobs.store import OUTBOX, delete_published_outbox

logger = logging.getLogger("modelyard.jobs.relay")

NOTIFY_CHANNEL = "modelyard_jobs_outbox"
MAX_REMEMBERED_TRACES = 10_000
PRUNE_EVERY_SECONDS = 60.0
LISTENER_PING_SECONDS = 30.0


class Publisher:
    """Sends outbox entries to NATS."""

    def __init__(self, js: JetStreamContext, flags: KeyValue, timeout: float) -> None:
        self._js = js
        self._flags = flags
        self._timeout = timeout
        # Trace context of the calls that wrote recent rows, by message id. Best effort:
        # a row published by another replica, or after a restart, starts a new trace.
        self._traces: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()

    def remember_trace(self, msg_id: str) -> None:
        """Continue the current trace when the row `msg_id` is published."""
        headers = headers_with_context()
        if headers:
            self._traces[msg_id] = headers
            while len(self._traces) > MAX_REMEMBERED_TRACES:
                self._traces.popitem(last=False)

    async def publish(self, entry: OutboxEntry) -> None:
        parent = context_from_headers(self._traces.pop(entry.msg_id, None))
        name = f"publish {entry.kind}"
        with tracer().start_as_current_span(name, context=parent, kind=SpanKind.PRODUCER):
            await self._publish(entry, headers_with_context({"Nats-Msg-Id": entry.msg_id}))

    async def _publish(self, entry: OutboxEntry, headers: dict[str, str]) -> None:
        if entry.kind == OutboxKind.TRAINING_REQUEST:
            await self._js.publish(
                TRAINING_REQUESTS_SUBJECT,
                entry.payload,
                timeout=self._timeout,
                stream=TRAINING_REQUESTS_STREAM,
                headers=headers,
            )
        elif entry.kind == OutboxKind.JOB_EVENT:
            await self._js.publish(
                job_events_subject(entry.job_id),
                entry.payload,
                timeout=self._timeout,
                stream=JOB_EVENTS_STREAM,
                headers=headers,
            )
        elif entry.kind == OutboxKind.CANCEL_FLAG:
            async with asyncio.timeout(self._timeout):
                await self._flags.put(entry.job_id, entry.payload)
        else:
            raise ValueError(f"unknown outbox kind {entry.kind!r}")


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        publisher: Publisher,
        *,
        poll_seconds: float,
        batch_size: int,
        retention_seconds: float,
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._retention = timedelta(seconds=retention_seconds)
        self._wake = asyncio.Event()
        self._last_prune = 0.0

    def continue_trace(self, msg_id: str) -> None:
        """Publish the row `msg_id` in the caller's trace. Called before the row is
        committed: on PostgreSQL the commit's notification can wake the relay before
        the caller gets to `wake()` (an e2e run saw the request published in a trace of
        its own)."""
        self._publisher.remember_trace(msg_id)

    def wake(self) -> None:
        """Publish now: something was just committed to the outbox."""
        self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled; never gives up on a database or NATS error."""
        backoff = Backoff()
        listener = (
            asyncio.create_task(self._listen(), name="outbox-listen")
            if is_postgresql(self._engine)
            else None
        )
        try:
            while True:
                self._wake.clear()
                try:
                    published, failed = await self.publish_pending()
                    await self._prune_now_and_then()
                except Exception:
                    logger.exception("outbox relay pass failed; retrying")
                    await asyncio.sleep(backoff.next_delay())
                    continue
                if failed and not published:  # NATS is likely down: give it time
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                if published >= self._batch_size:
                    continue  # more may be waiting
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_seconds):
                        await self._wake.wait()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def publish_pending(self) -> tuple[int, int]:
        """One pass: publish up to a batch of unpublished rows. Returns (published, failed)."""
        async with self._engine.begin() as connection:
            rows = await self._claim(connection)
            if not rows:
                return 0, 0
            outcomes = await self._publish_rows(rows)
            now = datetime.now(UTC)
            published = [row_id for row_id, error in outcomes.items() if error is None]
            if published:
                await connection.execute(
                    update(OUTBOX)
                    .where(OUTBOX.c.id.in_(published))
                    .values(published_time=now, publish_attempts=OUTBOX.c.publish_attempts + 1)
                )
            for row_id, error in outcomes.items():
                if error is not None:
                    await connection.execute(
                        update(OUTBOX)
                        .where(OUTBOX.c.id == row_id)
                        .values(
                            publish_attempts=OUTBOX.c.publish_attempts + 1, last_error=error[:1000]
                        )
                    )
        failed = len(rows) - len(published)
        if failed:
            logger.warning("outbox rows not published; will retry", extra={"failed": failed})
        return len(published), failed

    async def _claim(self, connection: AsyncConnection) -> Sequence[Row[*tuple[Any, ...]]]:
        statement = (
            select(OUTBOX.c.id, OUTBOX.c.kind, OUTBOX.c.job_id, OUTBOX.c.msg_id, OUTBOX.c.payload)
            .where(OUTBOX.c.published_time.is_(None))
            .order_by(OUTBOX.c.id)
            .limit(self._batch_size)
        )
        if is_postgresql(self._engine):
            statement = statement.with_for_update(skip_locked=True)
        return (await connection.execute(statement)).all()

    async def _publish_rows(self, rows: Sequence[Row[Any]]) -> dict[int, str | None]:
        """Publish each job's rows in order, jobs concurrently. Row id → error or None."""
        by_job: dict[str, list[Row[Any]]] = defaultdict(list)
        for row in rows:
            by_job[row.job_id].append(row)
        outcomes: dict[int, str | None] = {}

        async def publish_job_rows(job_rows: list[Row[Any]]) -> None:
            for index, row in enumerate(job_rows):
                entry = OutboxEntry(OutboxKind(row.kind), row.job_id, row.msg_id, row.payload)
                try:
                    await self._publisher.publish(entry)
                except Exception as error:
                    message = f"{type(error).__name__}: {error}"
                    for later in job_rows[index:]:  # keep the job's order: stop here
                        outcomes[later.id] = message
                    return
                outcomes[row.id] = None

        await asyncio.gather(*(publish_job_rows(job_rows) for job_rows in by_job.values()))
        return outcomes

    async def _prune_now_and_then(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        deleted = await delete_published_outbox(self._engine, datetime.now(UTC) - self._retention)
        if deleted:
            logger.info("pruned published outbox rows", extra={"deleted": deleted})

    async def _listen(self) -> None:
        """LISTEN for commits of other replicas; reconnect whenever the connection drops."""
        dsn = asyncpg_dsn(self._engine)
        backoff = Backoff()
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(dsn, timeout=10)
                lost = asyncio.Event()
                connection.add_termination_listener(_setter(lost))
                await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
                backoff.reset()
                self.wake()  # catch up with anything committed while not listening
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LISTENER_PING_SECONDS):
                            await lost.wait()
                    await connection.fetchval("SELECT 1", timeout=10)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning(
                    "outbox LISTEN connection lost; polling until it is back",
                    extra=error_fields(error),
                )
                await asyncio.sleep(backoff.next_delay())
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(5):
                            await connection.close()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()


def _setter(event: asyncio.Event) -> Callable[..., None]:
    return lambda *_: event.set()
