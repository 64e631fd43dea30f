"""The embedded default: the same service on SQLite (the whole suite runs on SQLite
with MODELYARD_TEST_JOBS_DATABASE=sqlite; this module keeps the main paths covered
on every run)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from google.protobuf.duration_pb2 import Duration

from modelyard.jobs.v1.jobs_service_pb2 import (
    CancelTrainingJobRequest,
    CreateTrainingJobRequest,
    ListTrainingJobsRequest,
    WatchTrainingJobRequest,
)
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.errors import status_reason
from tests.jobs.jobs_support import RunningJobs

pytestmark = pytest.mark.slow

S = TrainingJob


@pytest.fixture(scope="module")
def jobs_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('jobs-sqlite') / 'jobs.db'}"


async def create(jobs: RunningJobs, dataset_id: str, **fields: object) -> TrainingJob:
    job: TrainingJob = await jobs.stub.CreateTrainingJob(
        CreateTrainingJobRequest(dataset_id=dataset_id, target_column="y", **fields),  # type: ignore[arg-type]
        timeout=30,
    )
    return job


async def test_it_runs_on_sqlite(jobs: RunningJobs) -> None:
    assert jobs.app.engine is not None
    assert jobs.app.engine.dialect.name == "sqlite"


async def test_idempotent_create_under_concurrent_retries(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add()
    request_id = uuid.uuid4().hex
    published = await jobs.requests_published()
    created = await asyncio.gather(
        *(create(jobs, dataset_id, request_id=request_id) for _ in range(20))
    )
    assert len({job.job_id for job in created}) == 1
    _, message = await jobs.trainer.take(created[0].job_id)
    await message.ack()
    assert message.metadata.sequence.stream == published + 1


async def test_a_job_runs_is_watched_and_listed(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add()
    job = await create(jobs, dataset_id)
    stream = jobs.stub.WatchTrainingJob(WatchTrainingJobRequest(job_id=job.job_id), timeout=30)
    assert (await stream.read()).training_job.state == S.QUEUED

    _, message = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(job.job_id, 1, started={})
    await jobs.trainer.publish(
        job.job_id,
        1,
        progress={"iteration": 4, "total_iterations": 10, "metric_name": "l2"},
    )
    await jobs.trainer.publish(job.job_id, 1, succeeded={"metrics": {"rmse": 2.5}})
    await message.ack()
    updates = [update.training_job async for update in stream]
    assert [(u.state, u.progress.iteration) for u in updates] == [
        (S.RUNNING, 0),
        (S.RUNNING, 4),
        (S.SUCCEEDED, 4),
    ]
    done = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.SUCCEEDED)
    assert done.metrics["rmse"] == 2.5

    second = await create(jobs, dataset_id)
    first_page = await jobs.stub.ListTrainingJobs(
        ListTrainingJobsRequest(dataset_id=dataset_id, page_size=1), timeout=5
    )
    assert [j.job_id for j in first_page.training_jobs] == [second.job_id]
    next_page = await jobs.stub.ListTrainingJobs(
        ListTrainingJobsRequest(
            dataset_id=dataset_id, page_size=1, page_token=first_page.next_page_token
        ),
        timeout=5,
    )
    assert [j.job_id for j in next_page.training_jobs] == [job.job_id]
    assert next_page.next_page_token == ""


async def test_cancel_and_deadline(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add()
    queued = await create(jobs, dataset_id)
    cancelled = await jobs.stub.CancelTrainingJob(
        CancelTrainingJobRequest(job_id=queued.job_id), timeout=5
    )
    assert cancelled.state == S.CANCELLED

    job = await create(jobs, dataset_id, max_run_duration=Duration(seconds=1))
    _, message = await jobs.trainer.take(job.job_id)
    await jobs.trainer.publish(job.job_id, 1, started={})
    await message.ack()
    failed = await jobs.wait_for_job(job.job_id, lambda j: j.state == S.FAILED)
    assert status_reason(failed.error) == "DEADLINE_EXCEEDED"
