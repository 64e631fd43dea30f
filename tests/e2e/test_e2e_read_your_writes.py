"""Read-your-writes after a watch, hammered on the whole stack with the real Trainer:
when WatchTrainingJob ends with a final state, an immediate GetTrainingJob returns
that state with its metrics, over gRPC and over REST (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import httpx
import pytest

from devstack.stack import Stack
from modelyard.jobs.v1.jobs_service_pb2 import GetTrainingJobRequest, WatchTrainingJobRequest
from modelyard.jobs.v1.jobs_service_pb2_grpc import JobsServiceStub
from modelyard.jobs.v1.training_job_pb2 import TrainingJob

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# 15 jobs, each watched at once over gRPC and over REST and read right after its
# watch ends: 30 watch-then-get. Before the fix about 6 in 10 of them read RUNNING,
# so 30 reads all fresh by chance is as unlikely as 60 (0.4**30 < 1e-11).
JOBS = 15
IN_FLIGHT = 8
# Small and quick to train: 60 rows, two classes, 5 boosting rounds.
TINY_CSV = "x,y,label\n" + "".join(
    f"{i % 7},{(i * 3) % 11},{'a' if i % 7 > 3 else 'b'}\n" for i in range(60)
)


class Hammer:
    def __init__(self, stack: Stack, api: httpx.AsyncClient, jobs: JobsServiceStub) -> None:
        self.api = api
        self.jobs = jobs
        self.metadata = (("authorization", f"Bearer {stack.service_token}"),)
        self.stale: list[str] = []
        self.reads = 0

    async def one_job(self, dataset_id: str) -> None:
        created = await self.api.post(
            "/v1/trainingJobs",
            json={
                "datasetId": dataset_id,
                "targetColumn": "label",
                "params": {"num_iterations": "5"},
            },
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["jobId"]
        await asyncio.gather(self.over_grpc(job_id), self.over_rest(job_id))

    async def over_grpc(self, job_id: str) -> None:
        watch = self.jobs.WatchTrainingJob(
            WatchTrainingJobRequest(job_id=job_id), metadata=self.metadata, timeout=120
        )
        last = [update.training_job async for update in watch][-1]
        got = await self.jobs.GetTrainingJob(
            GetTrainingJobRequest(job_id=job_id), metadata=self.metadata, timeout=10
        )
        self.check("gRPC", job_id, TrainingJob.State.Name(last.state), got.state, dict(got.metrics))

    async def over_rest(self, job_id: str) -> None:
        last: dict[str, Any] = {}
        async with self.api.stream("GET", f"/v1/trainingJobs/{job_id}:watch") as events:
            assert events.status_code == 200
            async for line in events.aiter_lines():
                if line.startswith("data: "):
                    last = json.loads(line.removeprefix("data: "))["trainingJob"]
        got = (await self.api.get(f"/v1/trainingJobs/{job_id}")).json()
        state = TrainingJob.State.Value(got["state"])
        self.check("REST", job_id, last.get("state", "?"), state, got.get("metrics", {}))

    def check(
        self, path: str, job_id: str, watched: str, state: int, metrics: dict[str, Any]
    ) -> None:
        self.reads += 1
        if watched != "SUCCEEDED" or state != TrainingJob.SUCCEEDED or "accuracy" not in metrics:
            name = TrainingJob.State.Name(state)
            self.stale.append(f"{path} {job_id}: watch ended {watched}, then Get said {name}")


async def test_get_after_a_watch_never_reads_a_stale_job(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    async with (
        httpx.AsyncClient(base_url=stack.gateway_url, headers=headers, timeout=120) as api,
        grpc.aio.insecure_channel(stack.addresses["jobs"]) as channel,
    ):
        uploaded = await api.post(
            "/v1/datasets",
            params={"displayName": "read-your-writes"},
            content=TINY_CSV.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert uploaded.status_code == 200, uploaded.text
        hammer = Hammer(stack, api, JobsServiceStub(channel))
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def bounded() -> None:
            async with slots:
                await hammer.one_job(uploaded.json()["datasetId"])

        await asyncio.gather(*(bounded() for _ in range(JOBS)))
    assert hammer.reads == 2 * JOBS
    assert hammer.stale == []
