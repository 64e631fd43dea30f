"""Searching jobs in the Jobs service: the search checked and carried to the Trainer,
the quote (EstimateTrainingJob, and the memory limit at create), the trials kept
from the Trainer's events for ListTrials, and ReplayTrainingJob."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from modelyard.dispatch.v1.dispatch_pb2 import JobEvent
from modelyard.jobs.v1.jobs_service_pb2 import (
    CreateTrainingJobRequest,
    EstimateTrainingJobRequest,
    ListTrialsRequest,
    ReplayTrainingJobRequest,
)
from modelyard.jobs.v1.training_job_pb2 import (
    TrainingJob,
    TrainingProgress,
    TrainingSearch,
    Trial,
)
from runtime.errors import error_reason
from services.jobs.state_machine import apply_event
from tests.jobs.jobs_support import RunningJobs, eventually

pytestmark = pytest.mark.slow

SHA = "ab" * 32


async def create(jobs: RunningJobs, **fields: Any) -> TrainingJob:
    job: TrainingJob = await jobs.stub.CreateTrainingJob(
        CreateTrainingJobRequest(**fields), timeout=10
    )
    return job


async def create_error(jobs: RunningJobs, **fields: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(jobs, **fields)
    return caught.value


def budget(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


async def test_a_search_is_stored_and_carried_to_the_trainer(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add(columns=("x", "y"))
    search = TrainingSearch(budget=budget(60), max_trials=20)
    job = await create(jobs, dataset_id=dataset_id, target_column="y", search=search)
    assert job.search == search
    assert (await jobs.get(job.job_id)).search == search
    request, message = await jobs.trainer.take(job.job_id)
    await message.ack()
    assert request.search == search
    assert not request.HasField("replay")


@pytest.mark.parametrize(
    ("search", "max_run_seconds", "reason"),
    [
        (TrainingSearch(), 0, "SEARCH_LIMIT_REQUIRED"),
        (TrainingSearch(budget=budget(0.5)), 0, "SEARCH_BUDGET_TOO_SHORT"),
        (TrainingSearch(budget=Duration(seconds=-5)), 0, "SEARCH_BUDGET_INVALID"),
        (TrainingSearch(budget=budget(7200)), 86_000, "SEARCH_BUDGET_TOO_LONG"),
        (TrainingSearch(budget=budget(600)), 300, "SEARCH_BUDGET_EXCEEDS_MAX_RUN_DURATION"),
        (TrainingSearch(max_trials=-1), 0, "SEARCH_MAX_TRIALS_INVALID"),
        (TrainingSearch(max_trials=1001), 0, "SEARCH_MAX_TRIALS_INVALID"),
    ],
)
async def test_a_bad_search_is_refused_with_its_reason(
    jobs: RunningJobs, search: TrainingSearch, max_run_seconds: int, reason: str
) -> None:
    dataset_id = jobs.doubles.datasets.add(columns=("x", "y"))
    fields: dict[str, Any] = {"dataset_id": dataset_id, "target_column": "y", "search": search}
    if max_run_seconds:
        fields["max_run_duration"] = Duration(seconds=max_run_seconds)
    error = await create_error(jobs, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == reason


async def test_a_job_over_the_trainers_memory_limit_is_refused_up_front(
    jobs: RunningJobs,
) -> None:
    dataset_id = jobs.doubles.datasets.add(columns=("x", "y"))
    trainer = jobs.doubles.trainer
    published = await jobs.requests_published()
    trainer.peak_memory_bytes = 3 * trainer.memory_limit_bytes
    try:
        error = await create_error(
            jobs, dataset_id=dataset_id, target_column="y", search=TrainingSearch(max_trials=5)
        )
    finally:
        trainer.peak_memory_bytes = 100 * 1024 * 1024
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "TRAINING_MEMORY_LIMIT_EXCEEDED"
    assert "3,072 MiB" in error.details()
    assert await jobs.requests_published() == published


async def test_a_small_default_job_is_queued_without_asking_for_a_quote(
    jobs: RunningJobs,
) -> None:
    dataset_id = jobs.doubles.datasets.add(columns=("x", "y"))
    before = jobs.doubles.trainer.quotes
    job = await create(jobs, dataset_id=dataset_id, target_column="y")
    assert jobs.doubles.trainer.quotes == before
    _, message = await jobs.trainer.take(job.job_id)  # published: later counts hold still
    await message.ack()


async def test_estimate_takes_a_create_body_and_stores_nothing(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add_version("sales", 3, columns=("x", "y"))
    published = await jobs.requests_published()
    quote = await jobs.stub.EstimateTrainingJob(
        EstimateTrainingJobRequest(
            job=CreateTrainingJobRequest(
                dataset_id="sales@3", target_column="y", search=TrainingSearch(max_trials=9)
            )
        ),
        timeout=10,
    )
    assert quote.dataset_id == dataset_id
    assert quote.trials == 9
    assert quote.wall_time.seconds == 12
    assert quote.fits_memory_limit
    assert await jobs.requests_published() == published
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.stub.EstimateTrainingJob(
            EstimateTrainingJobRequest(
                job=CreateTrainingJobRequest(dataset_id=dataset_id, target_column="nope")
            ),
            timeout=10,
        )
    assert error_reason(caught.value) == "TARGET_COLUMN_NOT_FOUND"


async def started_job(jobs: RunningJobs, search: TrainingSearch | None = None) -> TrainingJob:
    dataset_id = jobs.doubles.datasets.add(columns=("x", "y"))
    job = await create(jobs, dataset_id=dataset_id, target_column="y", search=search)
    _, message = await jobs.trainer.take(job.job_id)
    await message.ack()
    await jobs.trainer.publish(job.job_id, 1, started={})
    return job


def trial(number: int, value: float) -> Trial:
    return Trial(
        number=number,
        state=Trial.STATE_COMPLETE,
        params={"num_leaves": str(8 + number)},
        objective="regression",
        metric_name="rmse",
        metric_value=value,
        fold_metric_values=[value, value],
    )


async def test_trials_are_kept_from_the_trainers_events_and_listed_by_page(
    jobs: RunningJobs,
) -> None:
    job = await started_job(jobs, TrainingSearch(max_trials=5))
    for number in range(5):
        await jobs.trainer.publish(job.job_id, 1, trial=trial(number, 10.0 - number))
    await jobs.trainer.publish(job.job_id, 1, trial=trial(2, 8.0))  # redelivered: kept once

    async def listed() -> list[Trial]:
        response = await jobs.stub.ListTrials(ListTrialsRequest(job_id=job.job_id), timeout=5)
        return list(response.trials)

    everything = await eventually(listed, lambda trials: len(trials) == 5)
    assert [t.number for t in everything] == [0, 1, 2, 3, 4]
    assert everything[3].params["num_leaves"] == "11"
    assert all(t.attempt == 1 for t in everything)

    pages: list[list[int]] = []
    token = ""
    while True:
        page = await jobs.stub.ListTrials(
            ListTrialsRequest(job_id=job.job_id, page_size=2, page_token=token), timeout=5
        )
        pages.append([t.number for t in page.trials])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[0, 1], [2, 3], [4]]

    # The job itself is unchanged by trials: they are not job changes.
    assert (await jobs.get(job.job_id)).state == TrainingJob.RUNNING
    for request, reason in [
        (ListTrialsRequest(job_id="nope-" + job.job_id[:8]), "JOB_NOT_FOUND"),
        (ListTrialsRequest(job_id=job.job_id, page_token="garbage"), "PAGE_TOKEN_INVALID"),
        (ListTrialsRequest(job_id="bad id!"), "JOB_ID_INVALID"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.stub.ListTrials(request, timeout=5)
        assert error_reason(caught.value) == reason


def test_search_progress_moves_forward_by_trial_then_iteration() -> None:
    job = TrainingJob(job_id="j", state=TrainingJob.RUNNING, attempt=1)

    def progress(trial: int, iteration: int) -> JobEvent:
        event = JobEvent(job_id="j", attempt=1, event_id=f"{trial}-{iteration}")
        event.progress.CopyFrom(TrainingProgress(trial=trial, iteration=iteration))
        return event

    later = apply_event(job, progress(trial=3, iteration=5))
    assert later is not None
    assert apply_event(later, progress(trial=2, iteration=400)) is None  # an older trial
    newer = apply_event(later, progress(trial=4, iteration=1))
    assert newer is not None
    assert newer.progress.trial == 4


async def test_a_replay_retrains_the_recorded_configuration_and_tells_the_hash(
    jobs: RunningJobs,
) -> None:
    job = await started_job(jobs, TrainingSearch(max_trials=3))
    summary = {
        "model_sha256": SHA,
        "effective_params": {"num_leaves": "12", "num_iterations": "140", "seed": "7"},
        "search": {"trials": 3, "objective": "poisson"},
    }
    await jobs.trainer.publish(
        job.job_id, 1, succeeded={"metrics": {"rmse": 1.5}, "summary": summary}
    )
    await jobs.wait_for_job(job.job_id, lambda j: j.state == TrainingJob.SUCCEEDED)

    response = await jobs.stub.ReplayTrainingJob(
        ReplayTrainingJobRequest(job_id=job.job_id, request_id="replay-" + job.job_id), timeout=10
    )
    replay = response.training_job
    assert replay.state == TrainingJob.QUEUED
    assert replay.replay.source_job_id == job.job_id
    assert replay.replay.expected_model_sha256 == SHA
    assert replay.dataset_id == job.dataset_id
    assert not replay.HasField("search")  # it trains the recorded configuration, no search
    again = await jobs.stub.ReplayTrainingJob(
        ReplayTrainingJobRequest(job_id=job.job_id, request_id="replay-" + job.job_id), timeout=10
    )
    assert again.training_job.job_id == replay.job_id  # idempotent

    request, message = await jobs.trainer.take(replay.job_id)
    await message.ack()
    assert request.replay.source_job_id == job.job_id
    assert dict(request.replay.refit_params) == summary["effective_params"]
    await jobs.trainer.publish(replay.job_id, 1, started={})
    await jobs.trainer.publish(
        replay.job_id, 1, succeeded={"metrics": {"rmse": 1.5}, "summary": {"model_sha256": SHA}}
    )
    done = await jobs.wait_for_job(replay.job_id, lambda j: j.state == TrainingJob.SUCCEEDED)
    assert done.replay.model_sha256_matches

    other = await jobs.stub.ReplayTrainingJob(
        ReplayTrainingJobRequest(job_id=job.job_id), timeout=10
    )
    _, message = await jobs.trainer.take(other.training_job.job_id)
    await message.ack()
    await jobs.trainer.publish(other.training_job.job_id, 1, started={})
    await jobs.trainer.publish(
        other.training_job.job_id,
        1,
        succeeded={"metrics": {"rmse": 1.5}, "summary": {"model_sha256": "cd" * 32}},
    )
    differs = await jobs.wait_for_job(
        other.training_job.job_id, lambda j: j.state == TrainingJob.SUCCEEDED
    )
    assert not differs.replay.model_sha256_matches


async def test_a_replay_needs_a_succeeded_job_whose_dataset_version_is_kept(
    jobs: RunningJobs,
) -> None:
    running = await started_job(jobs)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.stub.ReplayTrainingJob(
            ReplayTrainingJobRequest(job_id=running.job_id), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(caught.value) == "JOB_NOT_SUCCEEDED"

    await jobs.trainer.publish(
        running.job_id, 1, succeeded={"metrics": {"rmse": 1.0}, "summary": {"model_sha256": SHA}}
    )
    await jobs.wait_for_job(running.job_id, lambda j: j.state == TrainingJob.SUCCEEDED)
    del jobs.doubles.datasets.datasets[running.dataset_id]  # the version was deleted
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.stub.ReplayTrainingJob(
            ReplayTrainingJobRequest(job_id=running.job_id), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(caught.value) == "REPLAY_DATASET_GONE"
    assert running.dataset_id in caught.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.stub.ReplayTrainingJob(ReplayTrainingJobRequest(job_id="0" * 32), timeout=5)
    assert error_reason(caught.value) == "JOB_NOT_FOUND"
