"""The watchdog on a database of its own: what it fails, what it leaves alone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.dispatch.v1.dispatch_pb2 import JobEvent
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.db import create_engine, migrate
from runtime.errors import status_reason
from services.jobs.app import MIGRATIONS_DIR
from services.jobs.settings import JobsSettings
from services.jobs.store import OUTBOX, JobStore
from services.jobs.transitions import apply_event_to_store
from services.jobs.watchdog import DeadlineWatchdog
from tests.jobs.jobs_support import new_database_url

pytestmark = pytest.mark.slow


@pytest.fixture
def database_url(database_url_factory: Callable[[str], str], tmp_path: Path) -> str:
    return new_database_url(database_url_factory, tmp_path, "modelyard_jobs_watchdog")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[JobStore]:
    engine = create_engine(database_url)
    await migrate(engine, MIGRATIONS_DIR)
    store = await JobStore.open(engine, 2)
    yield store
    await store.close()
    await engine.dispose()


def watchdog(store: JobStore, max_queued_seconds: float = 0.0) -> DeadlineWatchdog:
    settings = JobsSettings(deadline_grace_seconds=10, max_queued_seconds=max_queued_seconds)
    return DeadlineWatchdog(store, lambda: None, settings)


async def add_job(store: JobStore, created_ago: timedelta, max_run: timedelta) -> TrainingJob:
    job = TrainingJob(
        job_id=uuid.uuid4().hex, dataset_id="ds", target_column="y", state=TrainingJob.QUEUED
    )
    created = datetime.now(UTC) - created_ago
    job.create_time.FromDatetime(created)
    job.update_time.FromDatetime(created)
    job.max_run_duration.FromTimedelta(max_run)
    await store.insert(job, [])
    return job


async def start(store: JobStore, job: TrainingJob, started_ago: timedelta) -> None:
    event = JobEvent(job_id=job.job_id, attempt=1, source="trainer/t", event_id=uuid.uuid4().hex)
    event.event_time.FromDatetime(datetime.now(UTC) - started_ago)
    event.started.SetInParent()
    await apply_event_to_store(store, event)


async def outbox_kinds(engine: AsyncEngine, job_id: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(OUTBOX.c.kind).where(OUTBOX.c.job_id == job_id).order_by(OUTBOX.c.id)
        )
        return list(rows.scalars())


async def state_of(store: JobStore, job_id: str) -> TrainingJob:
    found = await store.get(job_id)
    assert found is not None
    assert isinstance(found.job, TrainingJob)
    return found.job


async def test_only_jobs_past_their_limit_and_grace_are_failed(store: JobStore) -> None:
    hour = timedelta(hours=1)
    overdue = await add_job(store, 2 * hour, hour)
    await start(store, overdue, hour + timedelta(seconds=11))  # past limit + 10 s grace
    in_grace = await add_job(store, 2 * hour, hour)
    await start(store, in_grace, hour + timedelta(seconds=5))  # past limit, within grace
    fresh = await add_job(store, 2 * hour, hour)
    await start(store, fresh, timedelta(minutes=1))
    queued = await add_job(store, 2 * hour, hour)  # never started: no run deadline

    assert await watchdog(store).sweep() == 1

    failed = await state_of(store, overdue.job_id)
    assert failed.state == TrainingJob.FAILED
    assert status_reason(failed.error) == "DEADLINE_EXCEEDED"
    assert await outbox_kinds(store.engine, overdue.job_id) == ["job_event", "cancel_flag"]
    for untouched in (in_grace, fresh):
        assert (await state_of(store, untouched.job_id)).state == TrainingJob.RUNNING
    assert (await state_of(store, queued.job_id)).state == TrainingJob.QUEUED
    assert await watchdog(store).sweep() == 0  # failing is done once


async def test_queued_too_long_only_when_asked_for(store: JobStore) -> None:
    old = await add_job(store, timedelta(minutes=10), timedelta(hours=1))
    recent = await add_job(store, timedelta(seconds=5), timedelta(hours=1))
    assert await watchdog(store).sweep() == 0  # off by default

    assert await watchdog(store, max_queued_seconds=60).sweep() == 1
    failed = await state_of(store, old.job_id)
    assert failed.state == TrainingJob.FAILED
    assert status_reason(failed.error) == "QUEUED_TOO_LONG"
    assert await outbox_kinds(store.engine, old.job_id) == ["job_event", "cancel_flag"]
    assert (await state_of(store, recent.job_id)).state == TrainingJob.QUEUED
