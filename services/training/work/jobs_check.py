"""Before training, the Trainer asks JobsService whether the job exists.

NATS permissions already let only Jobs publish requests; this is the second line:
a request for a job Jobs never created (the forged request that registered a new
model version and moved `champion`) is terminated without training. The Trainer
only reads from Jobs; results still travel as events, never as calls.
"""

from __future__ import annotations

import grpc

from modelyard.jobs.v1.jobs_service_pb2 import GetScoringJobRequest, GetTrainingJobRequest
from modelyard.jobs.v1.jobs_service_pb2_grpc import JobsServiceStub


class JobsUnavailable(Exception):
    """JobsService did not answer: the request is retried later, not refused."""


class JobDirectory:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float) -> None:
        self._stub = JobsServiceStub(channel)
        self._timeout = timeout_seconds

    async def knows(self, job_id: str, *, scoring: bool) -> bool:
        """True when Jobs has the job (a scoring job when `scoring`), False when it answers
        NOT_FOUND."""
        try:
            if scoring:
                await self._stub.GetScoringJob(
                    GetScoringJobRequest(job_id=job_id), timeout=self._timeout
                )
            else:
                await self._stub.GetTrainingJob(
                    GetTrainingJobRequest(job_id=job_id), timeout=self._timeout
                )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise JobsUnavailable(f"GetTrainingJob: {error.code().name}") from error
        return True
