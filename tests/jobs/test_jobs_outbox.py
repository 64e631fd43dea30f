"""The transactional outbox: nothing committed is ever lost on its way to NATS."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import nats
import pytest
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.components import NatsServer
from devstack.processes import ManagedProcess, free_port
from devstack.stack import grpc_serving
from modelyard.dispatch.v1.dispatch_pb2 import TrainingRequest
from modelyard.jobs.v1 import jobs_service_pb2_grpc
from modelyard.jobs.v1.jobs_service_pb2 import CreateTrainingJobRequest
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime import nats_access
from runtime.channels import open_channel
from runtime.db import create_engine, migrate
from runtime.messaging import (
    TRAINING_REQUESTS_STREAM,
    cancellations,
)
from runtime.tracing import context_from_headers
from services.jobs.app import MIGRATIONS_DIR
from services.jobs.outbox import training_request_entry
from services.jobs.relay import OutboxRelay, Publisher
from services.jobs.store import OUTBOX, JobStore
from tests.jobs.jobs_support import (
    SERVICE_TOKEN,
    Doubles,
    common_settings,
    eventually,
    new_database_url,
)

pytestmark = pytest.mark.slow


@pytest.fixture
async def js(jobs_nats: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await jobs_nats.connect()
    js = nc.jetstream()
    yield js
    await nc.close()


@pytest.fixture
def database_url(database_url_factory: Callable[[str], str], tmp_path: Path) -> str:
    """A new, empty database (created outside the event loop: the factory runs its own)."""
    return new_database_url(database_url_factory, tmp_path, "modelyard_jobs_outbox")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine, MIGRATIONS_DIR)
    yield engine
    await engine.dispose()


def queued_job() -> TrainingJob:
    job = TrainingJob(
        job_id=uuid.uuid4().hex, dataset_id="ds", target_column="y", state=TrainingJob.QUEUED
    )
    now = datetime.now(UTC)
    job.create_time.FromDatetime(now)
    job.update_time.FromDatetime(now)
    job.max_run_duration.seconds = 3600
    return job


def request_of(job: TrainingJob) -> TrainingRequest:
    return TrainingRequest(job_id=job.job_id, dataset_id=job.dataset_id, target_column="y")


async def stored_messages(
    js: JetStreamContext, job_id: str
) -> list[tuple[TrainingRequest, dict[str, str]]]:
    """Every stored TrainingRequest of `job_id` with its headers, read without consuming
    anything."""
    info = await js.stream_info(TRAINING_REQUESTS_STREAM)
    found = []
    for sequence in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            message = await js.get_msg(TRAINING_REQUESTS_STREAM, sequence)
            request = TrainingRequest.FromString(message.data or b"")
            if request.job_id == job_id:
                assert message.headers is not None
                assert message.headers["Nats-Msg-Id"] == job_id
                found.append((request, dict(message.headers)))
    return found


async def stored_requests(js: JetStreamContext, job_id: str) -> list[TrainingRequest]:
    return [request for request, _ in await stored_messages(js, job_id)]


async def run_relay(relay: OutboxRelay) -> AsyncIterator[None]:
    task = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def unpublished(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        pending = select(OUTBOX.c.id).where(OUTBOX.c.published_time.is_(None))
        return len((await connection.execute(pending)).all())


async def test_a_row_committed_while_no_relay_ran_is_published_later(
    js: JetStreamContext, engine: AsyncEngine
) -> None:
    store = JobStore(engine)
    job = queued_job()
    await store.insert(job, [training_request_entry(request_of(job))])
    assert await stored_requests(js, job.job_id) == []  # committed, not yet published
    assert await unpublished(engine) == 1

    relay = OutboxRelay(
        engine,
        Publisher(js, await cancellations(js), timeout=2),
        poll_seconds=0.2,
        batch_size=10,
        retention_seconds=3600,
    )
    async with contextlib.asynccontextmanager(run_relay)(relay):
        await eventually(lambda: unpublished(engine), lambda count: count == 0)
    assert await stored_requests(js, job.job_id) == [request_of(job)]

    # a relay that crashed after publishing but before marking publishes again: deduplicated
    async with engine.begin() as connection:
        await connection.execute(update(OUTBOX).values(published_time=None))
    published, failed = await relay.publish_pending()
    assert (published, failed) == (1, 0)
    assert await stored_requests(js, job.job_id) == [request_of(job)]


async def listening_relay(
    js: JetStreamContext, engine: AsyncEngine, poll_seconds_without_notify: float
) -> OutboxRelay:
    """A relay that finds new rows on its own: on PostgreSQL by LISTEN/NOTIFY (its poll
    too slow to matter), on SQLite, with no NOTIFY, by polling."""
    notify = engine.dialect.name == "postgresql"
    return OutboxRelay(
        engine,
        Publisher(js, await cancellations(js), timeout=2),
        poll_seconds=60.0 if notify else poll_seconds_without_notify,
        batch_size=10,
        retention_seconds=3600,
    )


async def test_another_replicas_commit_wakes_the_relay(
    js: JetStreamContext, engine: AsyncEngine
) -> None:
    """PostgreSQL: LISTEN/NOTIFY wakes a relay at once, whatever its poll interval.
    (SQLite, with no NOTIFY, relies on polling.)"""
    relay = await listening_relay(js, engine, poll_seconds_without_notify=0.5)
    async with contextlib.asynccontextmanager(run_relay)(relay):
        await asyncio.sleep(0.5)  # the relay is idle, listening
        job = queued_job()
        # written through another engine: as another replica would
        other = create_engine(engine.url.render_as_string(hide_password=False))
        await JobStore(other).insert(job, [training_request_entry(request_of(job))])
        await other.dispose()
        published = await eventually(
            lambda: stored_requests(js, job.job_id), lambda found: len(found) == 1, within=3
        )
    assert published == [request_of(job)]


async def stored_traceparents(js: JetStreamContext, job_id: str) -> list[str]:
    return [headers.get("traceparent", "") for _, headers in await stored_messages(js, job_id)]


async def test_a_row_published_before_its_writer_wakes_the_relay_is_in_the_writers_trace(
    js: JetStreamContext, engine: AsyncEngine
) -> None:
    """The relay may publish a row as soon as it is committed (PostgreSQL's notification,
    or a poll), before the call that wrote it wakes the relay: the call's trace is handed
    over before the commit, so the request still travels in it."""
    relay = await listening_relay(js, engine, poll_seconds_without_notify=0.2)
    trace_id = uuid.uuid4().hex
    caller = context_from_headers({"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"})
    async with contextlib.asynccontextmanager(run_relay)(relay):
        await asyncio.sleep(0.5)  # the relay is idle, listening
        job = queued_job()
        token = otel_context.attach(caller)
        try:
            relay.continue_trace(job.job_id)
            await JobStore(engine).insert(job, [training_request_entry(request_of(job))])
        finally:
            otel_context.detach(token)
        # No wake(): the relay finds the row on its own.
        traceparents = await eventually(
            lambda: stored_traceparents(js, job.job_id), lambda found: len(found) == 1, within=3
        )
    assert traceparents[0].split("-")[1] == trace_id


# -- the test-only crash point, with the real process --------------------------------------


def jobs_process(
    work_dir: Path,
    database_url: str,
    nats_server: NatsServer,
    doubles: Doubles,
    address: str,
    crash: bool,
) -> ManagedProcess:
    env = {
        "MODELYARD_SERVICE_TOKEN": SERVICE_TOKEN,
        "MODELYARD_STATE_DIR": str(work_dir / "state"),
        "MODELYARD_JOBS_LISTEN_ADDRESS": address,
        "MODELYARD_JOBS_DATABASE_URL": database_url,
        **nats_server.env("JOBS", nats_access.JOBS),
        "MODELYARD_JOBS_DATASET_SERVICE_ADDRESS": doubles.dataset_address,
        "MODELYARD_JOBS_TRAINER_SERVICE_ADDRESS": doubles.trainer_address,
        "MODELYARD_SHUTDOWN_GRACE_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if crash:
        env["MODELYARD_JOBS_FAULT_CRASH_AFTER_COMMIT"] = "1"
    return ManagedProcess(
        name="jobs",
        command=[sys.executable, "-m", "services.jobs"],
        env=env,
        log_path=work_dir / "jobs.log",
    )


@pytest.mark.fault
async def test_a_crash_between_commit_and_publish_loses_nothing(
    tmp_path: Path,
    jobs_nats: NatsServer,
    js: JetStreamContext,
    doubles: Doubles,
    database_url: str,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    dataset_id = doubles.datasets.add()
    request = CreateTrainingJobRequest(
        dataset_id=dataset_id, target_column="y", request_id=uuid.uuid4().hex
    )
    channel = open_channel(address, common_settings(tmp_path))
    stub = jobs_service_pb2_grpc.JobsServiceStub(channel)

    crashing = jobs_process(tmp_path, database_url, jobs_nats, doubles, address, crash=True)
    crashing.start()
    try:
        await asyncio.to_thread(crashing.wait_until, lambda: grpc_serving(address), 60)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateTrainingJob(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.to_thread(crashing.popen.wait, 10) == 137  # type: ignore[union-attr]
    finally:
        crashing.stop()

    engine = create_engine(database_url)
    try:
        job = await JobStore(engine).find_by_request_id(request.request_id)
        assert job is not None, "the job was committed before the crash"
        assert await unpublished(engine) == 1
        assert await stored_requests(js, job.job_id) == []
    finally:
        await engine.dispose()

    restarted = jobs_process(tmp_path, database_url, jobs_nats, doubles, address, crash=False)
    restarted.start()
    try:
        await asyncio.to_thread(restarted.wait_until, lambda: grpc_serving(address), 60)
        published = await eventually(
            lambda: stored_requests(js, job.job_id), lambda found: len(found) == 1, within=10
        )
        assert published[0].dataset_id == dataset_id
        # the client's retry gets the job that was created, not a second one
        retried = await stub.CreateTrainingJob(request, timeout=10)
        assert retried.job_id == job.job_id
        assert len(await stored_requests(js, job.job_id)) == 1
    finally:
        await channel.close()
        restarted.stop()
