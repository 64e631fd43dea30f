"""The service rides out its infrastructure failing under it: PostgreSQL
connections terminated mid-run and a NATS restart, without being restarted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from devstack.components import NatsServer
from devstack.processes import port_open
from modelyard.jobs.v1.jobs_service_pb2 import CreateTrainingJobRequest
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from tests.jobs.jobs_support import RunningJobs, eventually

pytestmark = [pytest.mark.slow, pytest.mark.fault]


@pytest.fixture(scope="module")
def jobs_database_url(database_url_factory: Callable[[str], str]) -> str:
    """These tests terminate PostgreSQL backends: always PostgreSQL."""
    url = database_url_factory("modelyard_jobs_resilience")
    assert url.startswith("postgresql"), "the resilience tests need the machine's PostgreSQL"
    return url


async def admin(database_url: str) -> asyncpg.Connection:
    url = make_url(database_url)
    return await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database="postgres"
    )


async def terminate_backends(database_url: str) -> int:
    connection = await admin(database_url)
    try:
        terminated = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            make_url(database_url).database,
        )
        return int(terminated)
    finally:
        await connection.close()


async def listeners(database_url: str) -> set[int]:
    """Backends of the database whose last statement was a LISTEN: the relay's."""
    connection = await admin(database_url)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
            make_url(database_url).database,
        )
        return {int(row["pid"]) for row in rows}
    finally:
        await connection.close()


async def create_and_run(jobs: RunningJobs) -> TrainingJob:
    """Create a job, take it as the Trainer and start it: every path of the service."""
    job: TrainingJob = await jobs.stub.CreateTrainingJob(
        CreateTrainingJobRequest(dataset_id=jobs.doubles.datasets.add(), target_column="y"),
        timeout=10,
    )
    _, message = await jobs.trainer.take(job.job_id, within=20)
    await jobs.trainer.publish(job.job_id, 1, started={})
    await message.ack()
    return await jobs.wait_for_job(job.job_id, lambda j: j.state == TrainingJob.RUNNING, 20)


async def test_terminated_database_connections_are_replaced(
    jobs: RunningJobs, jobs_database_url: str
) -> None:
    await create_and_run(jobs)  # the pool holds connections now
    before = await eventually(lambda: listeners(jobs_database_url), lambda pids: len(pids) == 1)
    assert len(before) == 1

    assert await terminate_backends(jobs_database_url) >= 2

    job = await create_and_run(jobs)
    assert (await jobs.get(job.job_id)).state == TrainingJob.RUNNING
    # the relay's LISTEN connection came back too, as a new backend
    after = await eventually(
        lambda: listeners(jobs_database_url), lambda pids: len(pids) == 1 and pids != before
    )
    assert len(after) == 1
    assert after != before


async def test_a_nats_restart_delays_dispatch_but_loses_nothing(
    jobs: RunningJobs, jobs_nats: NatsServer
) -> None:
    await create_and_run(jobs)
    await asyncio.to_thread(jobs_nats.process.stop)
    try:
        # NATS is down: the job is stored (and its request waits in the outbox)
        job: TrainingJob = await jobs.stub.CreateTrainingJob(
            CreateTrainingJobRequest(dataset_id=jobs.doubles.datasets.add(), target_column="y"),
            timeout=10,
        )
        assert job.state == TrainingJob.QUEUED
        await asyncio.sleep(1.0)  # the relay fails at least once
    finally:
        jobs_nats.process.start()
        await asyncio.to_thread(
            jobs_nats.process.wait_until, lambda: port_open("127.0.0.1", jobs_nats.port), 30
        )
    _, message = await jobs.trainer.take(job.job_id, within=30)
    await jobs.trainer.publish(job.job_id, 1, started={})
    await message.ack()
    running = await jobs.wait_for_job(job.job_id, lambda j: j.state == TrainingJob.RUNNING, 30)
    assert running.attempt == 1
    await create_and_run(jobs)  # and everything keeps working
