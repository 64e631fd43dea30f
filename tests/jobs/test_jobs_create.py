"""CreateTrainingJob: what it checks, what it stores, what it queues."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from modelyard.dataset.v1.dataset_pb2 import Dataset
from modelyard.dispatch.v1.dispatch_pb2 import TrainingRequest
from modelyard.jobs.v1.jobs_service_pb2 import CreateTrainingJobRequest
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime import limits
from runtime.errors import error_reason
from tests.jobs.jobs_support import RunningJobs

pytestmark = pytest.mark.slow


async def create(jobs: RunningJobs, **fields: Any) -> TrainingJob:
    job: TrainingJob = await jobs.stub.CreateTrainingJob(
        CreateTrainingJobRequest(**fields),
        timeout=10,
    )
    return job


async def refused(jobs: RunningJobs, **fields: Any) -> grpc.aio.AioRpcError:
    """Create must fail, and queue nothing: the next request published is a later job's."""
    published = await jobs.requests_published()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(jobs, **fields)
    sentinel = await create(
        jobs, dataset_id=jobs.doubles.datasets.add(columns=("y",)), target_column="y"
    )
    _, message = await jobs.trainer.take(sentinel.job_id)
    assert message.metadata.sequence.stream == published + 1, "a refused job was queued"
    await message.ack()
    return caught.value


async def test_a_job_is_stored_and_its_request_published(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add(columns=("age", "income", "churned"))
    job = await create(
        jobs,
        dataset_id=dataset_id,
        target_column="churned",
        task=TrainingJob.BINARY,
        params={"num_leaves": "31"},
        registered_model_name="churn.model-v1",
    )
    assert job.state == TrainingJob.QUEUED
    assert job.attempt == 0
    assert job.max_run_duration.ToTimedelta() == timedelta(hours=1)  # the default
    assert await jobs.get(job.job_id) == job

    request, message = await jobs.trainer.take(job.job_id)
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == job.job_id
    assert request == TrainingRequest(
        job_id=job.job_id,
        dataset_id=dataset_id,
        target_column="churned",
        task=TrainingJob.BINARY,
        params={"num_leaves": "31"},
        registered_model_name="churn.model-v1",
        max_run_duration=job.max_run_duration,
        create_time=job.create_time,
        project_id="default",  # the service token without a project: `default`
    )
    assert job.project_id == "default"
    await message.ack()


async def test_task_unspecified_means_auto_and_max_run_duration_is_kept(
    jobs: RunningJobs,
) -> None:
    job = await create(
        jobs,
        dataset_id=jobs.doubles.datasets.add(),
        target_column="y",
        max_run_duration=Duration(seconds=90),
    )
    assert job.task == TrainingJob.AUTO
    assert job.max_run_duration.seconds == 90
    request, message = await jobs.trainer.take(job.job_id)
    assert request.max_run_duration.seconds == 90
    await message.ack()


async def test_unknown_dataset_is_not_found(jobs: RunningJobs) -> None:
    error = await refused(jobs, dataset_id="no-such-dataset", target_column="y")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error) == "DATASET_NOT_FOUND"
    assert "no-such-dataset" in (error.details() or "")


@pytest.mark.parametrize("state", [Dataset.UPLOADING, Dataset.PROCESSING, Dataset.FAILED])
async def test_a_dataset_not_ready_is_refused(jobs: RunningJobs, state: int) -> None:
    dataset_id = jobs.doubles.datasets.add(state=state)
    error = await refused(jobs, dataset_id=dataset_id, target_column="y")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "DATASET_NOT_READY"
    assert Dataset.State.Name(state) in (error.details() or "")


async def test_a_missing_target_column_is_named_with_the_columns_there_are(
    jobs: RunningJobs,
) -> None:
    columns = (*(f"feature_{i}" for i in range(20)), "Churned")
    dataset_id = jobs.doubles.datasets.add(columns=columns)
    error = await refused(jobs, dataset_id=dataset_id, target_column="churned")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == "TARGET_COLUMN_NOT_FOUND"
    details = error.details() or ""
    assert "'churned'" in details
    assert "did you mean 'Churned'?" in details
    assert "and 13 more" in details  # 8 listed of 21


async def test_params_the_trainer_refuses_pass_through_with_its_reason(jobs: RunningJobs) -> None:
    error = await refused(
        jobs,
        dataset_id=jobs.doubles.datasets.add(),
        target_column="y",
        params={"num_leaves": "31", "boosting": "dart"},
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == "PARAM_NOT_ALLOWED"
    assert "'boosting'" in (error.details() or "")


async def test_no_params_no_trainer_call(jobs: RunningJobs) -> None:
    calls = jobs.doubles.trainer.calls
    job = await create(jobs, dataset_id=jobs.doubles.datasets.add(), target_column="y")
    assert jobs.doubles.trainer.calls == calls
    await (await jobs.trainer.take(job.job_id))[1].ack()


async def test_the_longest_model_name_the_trainer_registers_is_stored(jobs: RunningJobs) -> None:
    name = "m" * limits.MAX_MODEL_NAME_CHARS  # the column held 100 before migration 0002
    job = await create(
        jobs,
        dataset_id=jobs.doubles.datasets.add(),
        target_column="y",
        registered_model_name=name,
    )
    assert (await jobs.get(job.job_id)).registered_model_name == name
    await (await jobs.trainer.take(job.job_id))[1].ack()


async def test_a_model_name_without_room_for_its_projects_prefix_is_refused(
    jobs: RunningJobs,
) -> None:
    """Outside `default` the model is registered as `<project>=<name>`, and the whole is
    bounded: Jobs refuses a name that fits alone but not with the prefix, at create,
    rather than the Trainer failing the job later."""
    project = "name-room"
    room = limits.MAX_MODEL_NAME_CHARS - len(f"{project}=")
    in_project = (("x-modelyard-project", project),)
    published = await jobs.requests_published()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.stub.CreateTrainingJob(
            CreateTrainingJobRequest(
                dataset_id=jobs.doubles.datasets.add(),
                target_column="y",
                registered_model_name="m" * (room + 1),
            ),
            metadata=in_project,
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "REGISTERED_MODEL_NAME_INVALID"
    assert f"at most {room} characters in project 'name-room'" in (caught.value.details() or "")
    assert await jobs.requests_published() == published  # nothing queued

    fitting: TrainingJob = await jobs.stub.CreateTrainingJob(
        CreateTrainingJobRequest(
            dataset_id=jobs.doubles.datasets.add(),
            target_column="y",
            registered_model_name="m" * room,
        ),
        metadata=in_project,
        timeout=10,
    )
    assert fitting.registered_model_name == "m" * room
    await (await jobs.trainer.take(fitting.job_id))[1].ack()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"target_column": "y"}, "DATASET_ID_REQUIRED"),
        ({"dataset_id": "ds"}, "TARGET_COLUMN_REQUIRED"),
        ({"dataset_id": "ds", "target_column": "y", "task": 9}, "TASK_INVALID"),
        (
            {"dataset_id": "ds", "target_column": "y", "registered_model_name": "-starts-badly"},
            "REGISTERED_MODEL_NAME_INVALID",
        ),
        (
            {"dataset_id": "ds", "target_column": "y", "registered_model_name": "a" * 129},
            "REGISTERED_MODEL_NAME_INVALID",
        ),
        (
            {"dataset_id": "ds", "target_column": "y", "registered_model_name": "has space"},
            "REGISTERED_MODEL_NAME_INVALID",
        ),
        (
            {"dataset_id": "ds", "target_column": "y", "request_id": "r" * 129},
            "REQUEST_ID_INVALID",
        ),
        (
            {"dataset_id": "ds", "target_column": "y", "request_id": "line\nbreak"},
            "REQUEST_ID_INVALID",
        ),
        (
            {"dataset_id": "ds", "target_column": "y", "max_run_duration": Duration(seconds=-5)},
            "MAX_RUN_DURATION_INVALID",
        ),
        (
            {"dataset_id": "ds", "target_column": "y", "max_run_duration": Duration()},
            "MAX_RUN_DURATION_INVALID",
        ),
        (
            {
                "dataset_id": "ds",
                "target_column": "y",
                "max_run_duration": Duration(seconds=86401),
            },
            "MAX_RUN_DURATION_TOO_LONG",
        ),
        (
            {"dataset_id": "ds", "target_column": "y", "params": {"": "1"}},
            "PARAM_INVALID",
        ),
    ],
)
async def test_bad_input_is_refused_before_anything_is_asked(
    jobs: RunningJobs, fields: dict[str, Any], reason: str
) -> None:
    dataset_calls = jobs.doubles.datasets.calls
    error = await refused(jobs, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == reason
    assert jobs.doubles.datasets.calls == dataset_calls + 1  # only the sentinel's check


async def test_a_valid_registered_model_name_is_accepted(jobs: RunningJobs) -> None:
    name = "A" + "b._-" * 24 + "xyz"  # 100 characters
    job = await create(
        jobs,
        dataset_id=jobs.doubles.datasets.add(),
        target_column="y",
        registered_model_name=name,
    )
    assert job.registered_model_name == name
    await (await jobs.trainer.take(job.job_id))[1].ack()


async def test_the_same_request_id_returns_the_same_job(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add()
    request_id = uuid.uuid4().hex
    first = await create(jobs, dataset_id=dataset_id, target_column="y", request_id=request_id)
    again = await create(jobs, dataset_id=dataset_id, target_column="y", request_id=request_id)
    assert again == first
    # even with other fields, and after the dataset is gone (AIP-155: the first response)
    del jobs.doubles.datasets.datasets[dataset_id]
    other = await create(jobs, dataset_id=dataset_id, target_column="x", request_id=request_id)
    assert other == first
    await (await jobs.trainer.take(first.job_id))[1].ack()


async def test_concurrent_retries_of_one_request_id_make_one_job_and_one_message(
    jobs: RunningJobs,
) -> None:
    dataset_id = jobs.doubles.datasets.add()
    request_id = uuid.uuid4().hex
    published = await jobs.requests_published()

    results = await asyncio.gather(
        *(
            create(jobs, dataset_id=dataset_id, target_column="y", request_id=request_id)
            for _ in range(20)
        )
    )

    assert len({job.job_id for job in results}) == 1
    job = results[0]
    _, message = await jobs.trainer.take(job.job_id)
    await message.ack()
    sentinel = await create(jobs, dataset_id=dataset_id, target_column="y")
    _, sentinel_message = await jobs.trainer.take(sentinel.job_id)
    await sentinel_message.ack()
    assert sentinel_message.metadata.sequence.stream == published + 2  # one job, one sentinel


async def test_a_burst_of_creates_is_all_published(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add()
    published = await jobs.requests_published()
    created = await asyncio.gather(
        *(create(jobs, dataset_id=dataset_id, target_column="y") for _ in range(50))
    )
    assert len({job.job_id for job in created}) == 50
    for _ in range(100):
        if await jobs.requests_published() == published + 50:
            break
        await asyncio.sleep(0.05)
    assert await jobs.requests_published() == published + 50
