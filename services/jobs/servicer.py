"""JobsService over gRPC: create, get, list, cancel and watch training jobs."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from nats.js.kv import KeyValue

from modelyard.dispatch.v1.dispatch_pb2 import TrainingRequest
from modelyard.jobs.v1 import jobs_service_pb2_grpc
from modelyard.jobs.v1.jobs_service_pb2 import (
    CancelTrainingJobRequest,
    CreateTrainingJobRequest,
    GetTrainingJobRequest,
    ListTrainingJobsRequest,
    ListTrainingJobsResponse,
    WatchTrainingJobRequest,
    WatchTrainingJobResponse,
)
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime.errors import failed_precondition, invalid_argument, unavailable
from runtime.logs import error_fields, log_context
from runtime.pagination import page_tail, parse_page
from services.jobs import reasons
from services.jobs.dependencies import DatasetChecker, ParamsChecker, ReadyDataset
from services.jobs.outbox import cancel_flag_entry, job_event_entry, training_request_entry
from services.jobs.relay import OutboxRelay
from services.jobs.settings import JobsSettings
from services.jobs.state_machine import apply_event, cancel_event, is_final
from services.jobs.store import DuplicateRequestId, JobStore
from services.jobs.transitions import ConflictError, Decision, change_job
from services.jobs.validation import (
    job_not_found,
    max_run_duration,
    validate_create,
    validate_job_id,
)
from services.jobs.watch import JobWatcher

logger = logging.getLogger("modelyard.jobs.servicer")

STATES = frozenset(TrainingJob.State.values()) - {TrainingJob.STATE_UNSPECIFIED}
CANCEL_FLAG_TIMEOUT_SECONDS = 2.0


class JobsServicer(jobs_service_pb2_grpc.JobsServiceServicer):
    def __init__(
        self,
        settings: JobsSettings,
        store: JobStore,
        datasets: DatasetChecker,
        params: ParamsChecker,
        relay: OutboxRelay,
        watcher: JobWatcher,
        flags: KeyValue,
    ) -> None:
        self._settings = settings
        self._store = store
        self._datasets = datasets
        self._params = params
        self._relay = relay
        self._watcher = watcher
        self._flags = flags

    # -- create ------------------------------------------------------------------------

    async def CreateTrainingJob(
        self, request: CreateTrainingJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> TrainingJob:
        validate_create(request, self._settings)
        if request.request_id:
            # A retry returns the job it created, whatever happened to the dataset since.
            existing = await self._store.find_by_request_id(request.request_id)
            if existing is not None:
                return existing
        dataset = await self._check_dependencies(request)
        job = self._new_job(request, dataset)
        try:
            await self._store.insert(job, [training_request_entry(_training_request(job))])
        except DuplicateRequestId:
            existing = await self._store.find_by_request_id(request.request_id)
            assert existing is not None
            return existing  # a concurrent retry won the race: its job is the job
        if self._settings.fault_crash_after_commit:
            os._exit(137)  # TEST ONLY: committed, not published (see settings)
        self._relay.wake(traced_msg_id=job.job_id)
        with log_context(job_id=job.job_id):
            logger.info(
                "training job queued",
                extra={"dataset_id": job.dataset_id, "target_column": job.target_column},
            )
        return job

    async def _check_dependencies(self, request: CreateTrainingJobRequest) -> ReadyDataset:
        """Dataset and parameters are checked concurrently; the dataset's error wins.
        Returns the dataset, found by the request's reference (id, name or name@version)."""
        dataset, params = await asyncio.gather(
            self._datasets.check(request.dataset_id, request.target_column),
            self._params.check(dict(request.params)),
            return_exceptions=True,
        )
        if isinstance(dataset, BaseException):
            raise dataset
        if isinstance(params, BaseException):
            raise params
        return dataset

    def _new_job(self, request: CreateTrainingJobRequest, dataset: ReadyDataset) -> TrainingJob:
        job = TrainingJob(
            job_id=uuid.uuid4().hex,
            dataset_id=dataset.dataset_id,  # the id the reference resolved to
            target_column=request.target_column,
            task=request.task or TrainingJob.AUTO,
            params=request.params,
            registered_model_name=request.registered_model_name,
            request_id=request.request_id,
            state=TrainingJob.QUEUED,
            attempt=0,
        )
        job.max_run_duration.FromTimedelta(max_run_duration(request, self._settings))
        now = datetime.now(UTC)
        job.create_time.FromDatetime(now)
        job.update_time.FromDatetime(now)
        return job

    # -- read --------------------------------------------------------------------------

    async def GetTrainingJob(
        self, request: GetTrainingJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> TrainingJob:
        job_id = validate_job_id(request.job_id)
        found = await self._store.get(job_id)
        if found is None:
            raise job_not_found(job_id)
        return found.job

    async def ListTrainingJobs(
        self, request: ListTrainingJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ListTrainingJobsResponse:
        if request.state and request.state not in STATES:
            raise invalid_argument(
                reasons.STATE_INVALID, f"state {request.state} is not a job state"
            )
        filters = {"state": request.state, "dataset_id": request.dataset_id}
        page = parse_page(request.page_size, request.page_token, filters)
        jobs, next_token = page_tail(
            await self._store.list_page(page, request.state or None, request.dataset_id or None),
            page,
            key=lambda job: (job.create_time.ToDatetime(tzinfo=UTC), job.job_id),
            filters=filters,
        )
        return ListTrainingJobsResponse(training_jobs=jobs, next_page_token=next_token)

    # -- cancel ------------------------------------------------------------------------

    async def CancelTrainingJob(
        self, request: CancelTrainingJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> TrainingJob:
        job_id = validate_job_id(request.job_id)
        now = datetime.now(UTC)

        def decide(job: TrainingJob) -> Decision | None:
            if is_final(job.state):
                raise failed_precondition(
                    reasons.JOB_ALREADY_FINISHED,
                    f"training job {job_id} is already {TrainingJob.State.Name(job.state)}",
                    job_id=job_id,
                    state=TrainingJob.State.Name(job.state),
                )
            event = cancel_event(job, now)
            updated = None if event is None else apply_event(job, event)
            if event is None or updated is None:
                return None  # already CANCELLING
            return Decision(
                updated, (job_event_entry(event), cancel_flag_entry(job_id, "CANCEL_REQUESTED"))
            )

        with log_context(job_id=job_id):
            try:
                outcome = await change_job(self._store, job_id, decide)
            except ConflictError as error:
                raise unavailable(
                    reasons.JOB_BUSY,
                    f"training job {job_id} kept changing; retry the cancel",
                    job_id=job_id,
                ) from error
            if outcome.job is None:
                raise job_not_found(job_id)
            if outcome.changed:
                self._relay.wake()
                await self._raise_cancel_flag(job_id)
                logger.info(
                    "cancel requested",
                    extra={"state": TrainingJob.State.Name(outcome.job.state)},
                )
            return outcome.job

    async def _raise_cancel_flag(self, job_id: str) -> None:
        """Set the flag before answering, so a Trainer that fetches the job from now on
        skips it. Best effort: the outbox row written with the change sets it anyway."""
        try:
            async with asyncio.timeout(CANCEL_FLAG_TIMEOUT_SECONDS):
                await self._flags.put(job_id, b"CANCEL_REQUESTED")
        except Exception as error:
            logger.warning(
                "cancel flag not set yet; the outbox relay will retry",
                extra=error_fields(error),
            )

    # -- watch -------------------------------------------------------------------------

    async def WatchTrainingJob(
        self, request: WatchTrainingJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[WatchTrainingJobResponse]:
        job_id = validate_job_id(request.job_id)
        with log_context(job_id=job_id):
            async for job in self._watcher.watch(job_id):
                yield WatchTrainingJobResponse(training_job=job)


def _training_request(job: TrainingJob) -> TrainingRequest:
    request = TrainingRequest(
        job_id=job.job_id,
        dataset_id=job.dataset_id,
        target_column=job.target_column,
        task=job.task,
        params=job.params,
        registered_model_name=job.registered_model_name,
    )
    request.max_run_duration.CopyFrom(job.max_run_duration)
    request.create_time.CopyFrom(job.create_time)
    return request
