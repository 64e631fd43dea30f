"""What CreateTrainingJob does when the services it asks are slow, gone or cached."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from devstack.components import NatsServer
from devstack.processes import free_port
from modelyard.dataset.v1.dataset_service_pb2_grpc import DatasetServiceStub
from modelyard.jobs.v1.jobs_service_pb2 import CreateTrainingJobRequest
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.channels import open_channel
from runtime.errors import ServiceError, error_reason
from services.jobs.dependencies import DatasetChecker
from tests.jobs.jobs_support import Doubles, RunningJobs, jobs_settings, start_jobs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def jobs(
    tmp_path_factory: pytest.TempPathFactory,
    jobs_nats: NatsServer,
    jobs_database_url: str,
    doubles: Doubles,
) -> AsyncIterator[RunningJobs]:
    """The service with its dataset cache on, and no Trainer listening where it looks."""
    settings = jobs_settings(
        tmp_path_factory.mktemp("jobs-state"),
        jobs_database_url,
        jobs_nats,
        doubles,
        trainer_service_address=f"127.0.0.1:{free_port()}",
        dataset_cache_seconds=30.0,
    )
    running, stop = await start_jobs(settings, doubles, jobs_nats)
    yield running
    await stop()


async def create(jobs: RunningJobs, dataset_id: str, **params: str) -> TrainingJob:
    job: TrainingJob = await jobs.stub.CreateTrainingJob(
        CreateTrainingJobRequest(dataset_id=dataset_id, target_column="y", params=params),
        timeout=10,
    )
    return job


async def test_an_unreachable_trainer_is_unavailable_and_nothing_is_queued(
    jobs: RunningJobs,
) -> None:
    dataset_id = jobs.doubles.datasets.add()
    published = await jobs.requests_published()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(jobs, dataset_id, num_leaves="31")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(caught.value) == "TRAINER_UNAVAILABLE"
    # without params the Trainer is not needed
    job = await create(jobs, dataset_id)
    _, message = await jobs.trainer.take(job.job_id)
    await message.ack()
    assert message.metadata.sequence.stream == published + 1


async def test_a_ready_dataset_is_asked_about_once_while_cached(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add(columns=("a", "y"))
    calls = jobs.doubles.datasets.calls
    for _ in range(3):
        await create(jobs, dataset_id)
    assert jobs.doubles.datasets.calls == calls + 1
    # the cached columns still refuse a wrong target
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.stub.CreateTrainingJob(
            CreateTrainingJobRequest(dataset_id=dataset_id, target_column="b"), timeout=10
        )
    assert error_reason(caught.value) == "TARGET_COLUMN_NOT_FOUND"
    assert jobs.doubles.datasets.calls == calls + 1


async def test_missing_or_unready_datasets_are_not_cached(jobs: RunningJobs) -> None:
    calls = jobs.doubles.datasets.calls
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await create(jobs, "not-there-yet")
    # each time asked again: by id, then (no such id) by name
    assert jobs.doubles.datasets.calls == calls + 4


async def test_an_unreachable_dataset_service_is_unavailable(jobs: RunningJobs) -> None:
    channel = open_channel(f"127.0.0.1:{free_port()}", jobs.settings)
    checker = DatasetChecker(DatasetServiceStub(channel), timeout=2.0, cache_seconds=5.0)
    with pytest.raises(ServiceError) as caught:
        await checker.check("any", "y")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "DATASET_SERVICE_UNAVAILABLE"
    await channel.close()


async def test_a_dataset_named_by_name_or_version_is_resolved_to_its_id(
    jobs: RunningJobs,
) -> None:
    name = "sales-" + uuid.uuid4().hex[:6]
    first = jobs.doubles.datasets.add_version(name, 1)
    second = jobs.doubles.datasets.add_version(name, 2)

    latest = await create(jobs, name)
    pinned = await create(jobs, f"{name}@1")
    assert latest.dataset_id == second
    assert pinned.dataset_id == first
    for job in (latest, pinned):
        request, message = await jobs.trainer.take(job.job_id)
        await message.ack()
        assert request.dataset_id == job.dataset_id  # the Trainer gets the id, not the name

    newer = jobs.doubles.datasets.add_version(name, 3)
    assert (await create(jobs, name)).dataset_id == newer  # a name is never cached
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(jobs, f"{name}@9")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(caught.value) == "DATASET_NOT_FOUND"
