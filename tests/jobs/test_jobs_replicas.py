"""Two Jobs replicas on one database and one NATS: any replica serves any job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devstack.components import NatsServer
from modelyard.jobs.v1.jobs_service_pb2 import (
    CancelTrainingJobRequest,
    CreateTrainingJobRequest,
    WatchTrainingJobRequest,
)
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from tests.jobs.jobs_support import Doubles, RunningJobs, jobs_settings, start_jobs

pytestmark = pytest.mark.slow

S = TrainingJob


@pytest.fixture(scope="module")
async def other(
    tmp_path_factory: pytest.TempPathFactory,
    jobs: RunningJobs,
    jobs_nats: NatsServer,
    jobs_database_url: str,
    doubles: Doubles,
) -> AsyncIterator[RunningJobs]:
    """A second replica of `jobs`."""
    settings = jobs_settings(
        tmp_path_factory.mktemp("jobs-replica"), jobs_database_url, jobs_nats, doubles
    )
    running, stop = await start_jobs(settings, doubles, jobs_nats)
    yield running
    await stop()


async def create(replica: RunningJobs, **fields: Any) -> TrainingJob:
    job: TrainingJob = await replica.stub.CreateTrainingJob(
        CreateTrainingJobRequest(target_column="y", **fields), timeout=10
    )
    return job


async def test_a_job_created_on_one_replica_is_watched_on_the_other(
    jobs: RunningJobs, other: RunningJobs
) -> None:
    job = await create(jobs, dataset_id=jobs.doubles.datasets.add())
    stream = other.stub.WatchTrainingJob(WatchTrainingJobRequest(job_id=job.job_id), timeout=30)
    assert (await stream.read()).training_job.state == S.QUEUED

    _, message = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(job.job_id, 1, started={})
    await jobs.trainer.publish(job.job_id, 1, progress={"iteration": 1, "total_iterations": 9})
    await jobs.trainer.publish(job.job_id, 1, succeeded={"metrics": {"accuracy": 0.7}})
    await message.ack()
    updates = [update.training_job async for update in stream]
    assert [(u.state, u.progress.iteration) for u in updates] == [
        (S.RUNNING, 0),
        (S.RUNNING, 1),
        (S.SUCCEEDED, 1),
    ]
    on_one = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.SUCCEEDED)
    assert await other.get(job.job_id) == on_one == updates[-1]


async def test_retries_spread_over_replicas_make_one_job(
    jobs: RunningJobs, other: RunningJobs
) -> None:
    dataset_id = jobs.doubles.datasets.add()
    request_id = uuid.uuid4().hex
    published = await jobs.requests_published()
    created = await asyncio.gather(
        *(
            create(replica, dataset_id=dataset_id, request_id=request_id)
            for replica in (jobs, other) * 10
        )
    )
    assert len({job.job_id for job in created}) == 1
    _, message = await jobs.trainer.take(created[0].job_id)
    await message.ack()
    assert message.metadata.sequence.stream == published + 1


async def test_both_relays_publish_every_job_once(jobs: RunningJobs, other: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add()
    published = await jobs.requests_published()
    created = await asyncio.gather(
        *(create(replica, dataset_id=dataset_id) for replica in (jobs, other) * 40)
    )
    for _ in range(100):
        if await jobs.requests_published() >= published + 80:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # and nothing more comes
    assert await jobs.requests_published() == published + len(created) == published + 80


async def test_a_cancel_on_either_replica(jobs: RunningJobs, other: RunningJobs) -> None:
    job = await create(jobs, dataset_id=jobs.doubles.datasets.add())
    _, message = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(job.job_id, 1, started={})
    await message.ack()
    await other.wait_for_job(job.job_id, lambda j: j.state == S.RUNNING)
    cancelling = await other.stub.CancelTrainingJob(
        CancelTrainingJobRequest(job_id=job.job_id), timeout=5
    )
    assert cancelling.state == S.CANCELLING
    await jobs.trainer.publish(job.job_id, 1, cancelled={})
    assert (await jobs.wait_for_job(job.job_id, lambda j: j.state == S.CANCELLED)).state == (
        S.CANCELLED
    )
