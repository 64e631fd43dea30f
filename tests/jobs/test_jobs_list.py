"""ListTrainingJobs and ListScoringJobs: newest first, filtered by state and dataset,
paginated; a page token pages only the list that issued it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from modelyard.jobs.v1.jobs_service_pb2 import (
    CancelTrainingJobRequest,
    CreateScoringJobRequest,
    CreateTrainingJobRequest,
    ListScoringJobsRequest,
    ListScoringJobsResponse,
    ListTrainingJobsRequest,
    ListTrainingJobsResponse,
)
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.errors import error_reason
from tests.jobs.jobs_support import RunningJobs

pytestmark = pytest.mark.slow


async def list_jobs(jobs: RunningJobs, **fields: Any) -> ListTrainingJobsResponse:
    response: ListTrainingJobsResponse = await jobs.stub.ListTrainingJobs(
        ListTrainingJobsRequest(**fields),
        timeout=5,
    )
    return response


async def all_pages(jobs: RunningJobs, **fields: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await list_jobs(jobs, page_token=token, **fields)
        pages.append([job.job_id for job in response.training_jobs])
        token = response.next_page_token
        if not token:
            return pages


@dataclass
class Seeded:
    first_dataset: str
    first: list[str]  # job ids in creation order
    second_dataset: str
    second: list[str]


@pytest.fixture(scope="module")
async def seeded(jobs: RunningJobs) -> Seeded:
    """Two datasets: 7 jobs on the first (its 2nd to 4th cancelled), 2 on the second."""
    seeded = Seeded(jobs.doubles.datasets.add(), [], jobs.doubles.datasets.add(), [])
    for dataset_id, job_ids, count in (
        (seeded.first_dataset, seeded.first, 7),
        (seeded.second_dataset, seeded.second, 2),
    ):
        for _ in range(count):
            job = await jobs.stub.CreateTrainingJob(
                CreateTrainingJobRequest(dataset_id=dataset_id, target_column="y"), timeout=5
            )
            job_ids.append(job.job_id)
    for job_id in seeded.first[1:4]:
        await jobs.stub.CancelTrainingJob(CancelTrainingJobRequest(job_id=job_id), timeout=5)
    return seeded


async def test_jobs_of_a_dataset_newest_first_in_pages(jobs: RunningJobs, seeded: Seeded) -> None:
    newest_first = seeded.first[::-1]
    pages = await all_pages(jobs, dataset_id=seeded.first_dataset, page_size=3)
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]


async def test_a_page_that_ends_exactly_has_no_next_token(
    jobs: RunningJobs, seeded: Seeded
) -> None:
    response = await list_jobs(jobs, dataset_id=seeded.second_dataset, page_size=2)
    assert [job.job_id for job in response.training_jobs] == seeded.second[::-1]
    assert response.next_page_token == ""


async def test_filter_by_state_and_dataset(jobs: RunningJobs, seeded: Seeded) -> None:
    cancelled = await all_pages(
        jobs, dataset_id=seeded.first_dataset, state=TrainingJob.CANCELLED, page_size=2
    )
    assert cancelled == [[seeded.first[3], seeded.first[2]], [seeded.first[1]]]
    queued = await list_jobs(jobs, dataset_id=seeded.first_dataset, state=TrainingJob.QUEUED)
    assert [job.job_id for job in queued.training_jobs] == [
        seeded.first[6],
        seeded.first[5],
        seeded.first[4],
        seeded.first[0],
    ]
    assert all(job.state == TrainingJob.QUEUED for job in queued.training_jobs)


async def test_filter_by_state_across_datasets(jobs: RunningJobs, seeded: Seeded) -> None:
    listed = await all_pages(jobs, state=TrainingJob.CANCELLED, page_size=1000)
    ids = {job_id for page in listed for job_id in page}
    assert set(seeded.first[1:4]) <= ids
    assert not set(seeded.second) & ids


async def test_an_unknown_dataset_lists_nothing(jobs: RunningJobs, seeded: Seeded) -> None:
    response = await list_jobs(jobs, dataset_id="no-such-dataset")
    assert list(response.training_jobs) == []
    assert response.next_page_token == ""


async def test_every_job_newest_first_by_default(jobs: RunningJobs, seeded: Seeded) -> None:
    response = await list_jobs(jobs)
    listed = [job.job_id for job in response.training_jobs]
    assert listed[:2] == seeded.second[::-1]
    times = [job.create_time.ToDatetime() for job in response.training_jobs]
    assert times == sorted(times, reverse=True)


async def test_the_default_page_is_50_jobs(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add()
    created = await asyncio.gather(
        *(
            jobs.stub.CreateTrainingJob(
                CreateTrainingJobRequest(dataset_id=dataset_id, target_column="y"), timeout=10
            )
            for _ in range(55)
        )
    )
    first = await list_jobs(jobs, dataset_id=dataset_id)
    assert len(first.training_jobs) == 50
    rest = await list_jobs(jobs, dataset_id=dataset_id, page_token=first.next_page_token)
    assert len(rest.training_jobs) == 5
    assert rest.next_page_token == ""
    listed = [job.job_id for job in [*first.training_jobs, *rest.training_jobs]]
    assert sorted(listed) == sorted(job.job_id for job in created)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"page_size": -1}, "PAGE_SIZE_INVALID"),
        ({"page_token": "not-a-token"}, "PAGE_TOKEN_INVALID"),
        ({"state": 42}, "STATE_INVALID"),
    ],
)
async def test_bad_list_requests(jobs: RunningJobs, fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_jobs(jobs, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == reason


async def test_a_token_is_refused_with_other_filters(jobs: RunningJobs, seeded: Seeded) -> None:
    token = (await list_jobs(jobs, dataset_id=seeded.first_dataset, page_size=2)).next_page_token
    assert token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_jobs(jobs, page_token=token, state=TrainingJob.QUEUED)
    assert error_reason(caught.value) == "PAGE_TOKEN_INVALID"


# -- ListScoringJobs: the same list for the other kind ----------------------------------


async def list_scoring(jobs: RunningJobs, **fields: Any) -> ListScoringJobsResponse:
    response: ListScoringJobsResponse = await jobs.stub.ListScoringJobs(
        ListScoringJobsRequest(**fields), timeout=5
    )
    return response


async def scoring_pages(jobs: RunningJobs, **fields: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await list_scoring(jobs, page_token=token, **fields)
        pages.append([job.job_id for job in response.scoring_jobs])
        token = response.next_page_token
        if not token:
            return pages


async def create_both_kinds(
    jobs: RunningJobs, dataset_id: str, count: int
) -> tuple[list[str], ...]:
    training: list[str] = []
    scoring: list[str] = []
    for _ in range(count):
        created = await jobs.stub.CreateTrainingJob(
            CreateTrainingJobRequest(dataset_id=dataset_id, target_column="y"), timeout=5
        )
        training.append(created.job_id)
        scored = await jobs.stub.CreateScoringJob(
            CreateScoringJobRequest(dataset_id=dataset_id, model_name="listed"), timeout=5
        )
        scoring.append(scored.job_id)
    return training, scoring


async def test_scoring_jobs_list_newest_first_in_pages_without_training_jobs(
    jobs: RunningJobs,
) -> None:
    dataset_id = jobs.doubles.datasets.add()
    training, scoring = await create_both_kinds(jobs, dataset_id, 3)
    newest_first = scoring[::-1]
    assert await scoring_pages(jobs, dataset_id=dataset_id, page_size=2) == [
        newest_first[:2],
        newest_first[2:],
    ]
    assert await all_pages(jobs, dataset_id=dataset_id) == [training[::-1]]
    queued = await scoring_pages(jobs, dataset_id=dataset_id, state=TrainingJob.QUEUED)
    assert queued == [newest_first]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_scoring(jobs, state=42)
    assert error_reason(caught.value) == "STATE_INVALID"


async def test_a_page_token_pages_only_the_kind_of_list_that_issued_it(jobs: RunningJobs) -> None:
    dataset_id = jobs.doubles.datasets.add()
    await create_both_kinds(jobs, dataset_id, 3)
    training_token = (await list_jobs(jobs, dataset_id=dataset_id, page_size=2)).next_page_token
    scoring_token = (await list_scoring(jobs, dataset_id=dataset_id, page_size=2)).next_page_token
    assert training_token
    assert scoring_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_scoring(jobs, dataset_id=dataset_id, page_size=2, page_token=training_token)
    assert error_reason(caught.value) == "PAGE_TOKEN_INVALID"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_jobs(jobs, dataset_id=dataset_id, page_size=2, page_token=scoring_token)
    assert error_reason(caught.value) == "PAGE_TOKEN_INVALID"
