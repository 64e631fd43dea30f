"""JobsService over gRPC: create, get, list, cancel and watch training and scoring jobs.

Both kinds are rows of one table and live by one state machine; each RPC answers
for its own kind only (a scoring job's id is NOT_FOUND to GetTrainingJob)."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from nats.js.kv import KeyValue

from modelyard.dispatch.v1.dispatch_pb2 import (
    ReplayConfiguration,
    ScoringRequest,
    TrainingRequest,
)
from modelyard.jobs.v1 import jobs_service_pb2_grpc
from modelyard.jobs.v1.jobs_service_pb2 import (
    CancelScoringJobRequest,
    CancelTrainingJobRequest,
    CreateScoringJobRequest,
    CreateTrainingJobRequest,
    EstimateTrainingJobRequest,
    EstimateTrainingJobResponse,
    GetScoringJobRequest,
    GetTrainingJobReportRequest,
    GetTrainingJobReportResponse,
    GetTrainingJobRequest,
    ListScoringJobsRequest,
    ListScoringJobsResponse,
    ListTrainingJobsRequest,
    ListTrainingJobsResponse,
    ListTrialsRequest,
    ListTrialsResponse,
    ReplayTrainingJobRequest,
    ReplayTrainingJobResponse,
    WatchScoringJobRequest,
    WatchScoringJobResponse,
    WatchTrainingJobRequest,
    WatchTrainingJobResponse,
)
from modelyard.jobs.v1.scoring_job_pb2 import ScoringJob
from modelyard.jobs.v1.training_job_pb2 import Replay, TrainingJob
from modelyard.training.v1.trainer_service_pb2 import (
    EstimateTrainingRequest,
    EstimateTrainingResponse,
)
from runtime.access import current_caller
from runtime.errors import (
    ServiceError,
    failed_precondition,
    invalid_argument,
    not_found,
    unavailable,
)
from runtime.limits import check_request_id
from runtime.logs import error_fields, log_context
from runtime.pagination import page_tail, parse_page
from services.jobs import reasons
from services.jobs.dependencies import DatasetChecker, ParamsChecker, ReadyDataset
from services.jobs.outbox import cancel_flag_entry, job_event_entry, training_request_entry
from services.jobs.relay import OutboxRelay
from services.jobs.settings import JobsSettings
from services.jobs.state_machine import (
    SCORING,
    TRAINING,
    Job,
    apply_event,
    cancel_event,
    is_final,
    kind_of,
    state_name,
)
from services.jobs.store import DuplicateRequestId, JobStore
from services.jobs.transitions import ConflictError, Decision, change_job
from services.jobs.validation import (
    job_not_found,
    max_run_duration,
    validate_create,
    validate_create_scoring,
    validate_job_id,
)
from services.jobs.watch import JobWatcher

logger = logging.getLogger("modelyard.jobs.servicer")

STATES = frozenset(TrainingJob.State.values()) - {TrainingJob.STATE_UNSPECIFIED}
DEFAULT_ALIAS = "champion"
MAX_OUTPUT_DISPLAY_NAME = 200
CANCEL_FLAG_TIMEOUT_SECONDS = 2.0
JobT = TypeVar("JobT", TrainingJob, ScoringJob)


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
        validate_create(request, self._settings, current_caller().project)
        if request.request_id:
            # A retry returns the job it created, whatever happened to the dataset since.
            existing = await self._store.find_by_request_id(request.request_id)
            if existing is not None:
                return _of_kind(existing, TrainingJob, request.request_id)
        dataset = await self._check_dependencies(request)
        await self._check_quote(request, dataset)
        job = self._new_job(request, dataset)
        self._relay.continue_trace(job.job_id)
        try:
            await self._store.insert(job, [training_request_entry(_training_request(job))])
        except DuplicateRequestId:
            existing = await self._store.find_by_request_id(request.request_id)
            assert existing is not None
            # a concurrent retry won the race: its job is the job
            return _of_kind(existing, TrainingJob, request.request_id)
        if self._settings.fault_crash_after_commit:
            os._exit(137)  # TEST ONLY: committed, not published (see settings)
        self._relay.wake()
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

    async def _check_quote(self, request: CreateTrainingJobRequest, dataset: ReadyDataset) -> None:
        """A searching job, or one on a big table, is refused when the Trainer expects it
        to need more memory than its limit. Best effort: with the Trainer unreachable the
        job is queued unquoted (as jobs always could be while Trainers restart)."""
        searching = request.HasField("search")
        if not searching and dataset.cells < self._settings.estimate_min_cells:
            return
        try:
            quote = await self._params.quote(_estimate_request(request, dataset.dataset_id))
        except ServiceError as error:
            if error.reason != reasons.TRAINER_UNAVAILABLE:
                raise
            logger.warning("job queued without a quote: the Trainer did not answer")
            return
        if not quote.fits_memory_limit:
            raise _over_memory_limit(quote, dataset.dataset_id)

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
        if request.HasField("search"):
            job.search.CopyFrom(request.search)
        now = datetime.now(UTC)
        job.create_time.FromDatetime(now)
        job.update_time.FromDatetime(now)
        return job

    # -- read --------------------------------------------------------------------------

    async def GetTrainingJob(
        self, request: GetTrainingJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> TrainingJob:
        return await self._training_job(validate_job_id(request.job_id))

    async def _training_job(self, job_id: str) -> TrainingJob:
        found = await self._store.get(job_id)
        if found is None or not isinstance(found.job, TrainingJob):
            raise job_not_found(job_id)
        return found.job

    async def ListTrainingJobs(
        self, request: ListTrainingJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ListTrainingJobsResponse:
        filters = {"state": request.state, "dataset_id": request.dataset_id}
        jobs, next_token = await self._list_jobs(request, filters, TrainingJob)
        return ListTrainingJobsResponse(training_jobs=jobs, next_page_token=next_token)

    async def _list_jobs(
        self,
        request: ListTrainingJobsRequest | ListScoringJobsRequest,
        filters: Mapping[str, object],
        kind: type[JobT],
    ) -> tuple[list[JobT], str]:
        """One page of one kind of job, newest first, and the next page's token.

        `filters` is what a page token is bound to (a token is refused with other
        filters); each kind passes its own so that tokens issued before stay valid."""
        if request.state and request.state not in STATES:
            raise invalid_argument(
                reasons.STATE_INVALID, f"state {request.state} is not a job state"
            )
        page = parse_page(request.page_size, request.page_token, filters)
        listed = await self._store.list_page(
            page,
            request.state or None,
            request.dataset_id or None,
            SCORING if kind is ScoringJob else TRAINING,
        )
        return page_tail(
            [job for job in listed if isinstance(job, kind)],
            page,
            key=lambda job: (job.create_time.ToDatetime(tzinfo=UTC), job.job_id),
            filters=filters,
        )

    async def ListTrials(
        self, request: ListTrialsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ListTrialsResponse:
        job_id = validate_job_id(request.job_id)
        filters = {"job_id": job_id}
        page = parse_page(request.page_size, request.page_token, filters)
        job = await self._training_job(job_id)
        trials, next_token = page_tail(
            await self._store.list_trials(job_id, job.attempt, page),
            page,
            key=lambda trial: (trial.number, ""),
            filters=filters,
        )
        return ListTrialsResponse(trials=trials, next_page_token=next_token)

    async def GetTrainingJobReport(
        self, request: GetTrainingJobReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> GetTrainingJobReportResponse:
        job_id = validate_job_id(request.job_id)
        job = await self._training_job(job_id)
        report = await self._store.get_report(job_id)
        if report is None:
            raise report_not_found(job)
        return GetTrainingJobReportResponse(report=report)

    # -- estimate ----------------------------------------------------------------------

    async def EstimateTrainingJob(
        self, request: EstimateTrainingJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> EstimateTrainingJobResponse:
        job = request.job
        validate_create(job, self._settings, current_caller().project)
        dataset = await self._check_dependencies(job)
        quote = await self._params.quote(_estimate_request(job, dataset.dataset_id))
        response = EstimateTrainingJobResponse(
            dataset_id=dataset.dataset_id,
            peak_memory_bytes=quote.peak_memory_bytes,
            trials=quote.trials,
            memory_limit_bytes=quote.memory_limit_bytes,
            fits_memory_limit=quote.fits_memory_limit,
            basis=quote.basis,
        )
        response.wall_time.CopyFrom(quote.wall_time)
        return response

    # -- replay ------------------------------------------------------------------------

    async def ReplayTrainingJob(
        self, request: ReplayTrainingJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ReplayTrainingJobResponse:
        source_id = validate_job_id(request.job_id)
        check_request_id(request.request_id, reasons.REQUEST_ID_INVALID)
        if request.request_id:
            existing = await self._store.find_by_request_id(request.request_id)
            if existing is not None:
                return ReplayTrainingJobResponse(
                    training_job=_of_kind(existing, TrainingJob, request.request_id)
                )
        source = await self._training_job(source_id)
        _check_replayable(source)
        await self._check_dataset_kept(source)
        job, replay = self._replay_job(source, request.request_id)
        self._relay.continue_trace(job.job_id)
        try:
            await self._store.insert(job, [training_request_entry(_training_request(job, replay))])
        except DuplicateRequestId:
            existing = await self._store.find_by_request_id(request.request_id)
            assert existing is not None
            return ReplayTrainingJobResponse(
                training_job=_of_kind(existing, TrainingJob, request.request_id)
            )
        self._relay.wake()
        with log_context(job_id=job.job_id):
            logger.info("replay queued", extra={"source_job_id": source_id})
        return ReplayTrainingJobResponse(training_job=job)

    async def _check_dataset_kept(self, source: TrainingJob) -> None:
        try:
            await self._datasets.check(source.dataset_id, source.target_column)
        except ServiceError as error:
            if error.reason in (reasons.DATASET_NOT_FOUND, reasons.DATASET_NOT_READY):
                raise failed_precondition(
                    reasons.REPLAY_DATASET_GONE,
                    f"training job {source.job_id} was trained on dataset version "
                    f"{source.dataset_id}, which no longer exists (or is not READY): "
                    "it cannot be replayed",
                    job_id=source.job_id,
                    dataset_id=source.dataset_id,
                ) from error
            raise

    def _replay_job(
        self, source: TrainingJob, request_id: str
    ) -> tuple[TrainingJob, ReplayConfiguration]:
        job = TrainingJob(
            job_id=uuid.uuid4().hex,
            dataset_id=source.dataset_id,
            target_column=source.target_column,
            task=source.task,
            params=source.params,
            registered_model_name=source.mlflow.registered_model_name
            or source.registered_model_name,
            request_id=request_id,
            state=TrainingJob.QUEUED,
            attempt=0,
            replay=Replay(
                source_job_id=source.job_id,
                expected_model_sha256=source.summary.model_sha256,
            ),
        )
        job.max_run_duration.CopyFrom(source.max_run_duration)
        now = datetime.now(UTC)
        job.create_time.FromDatetime(now)
        job.update_time.FromDatetime(now)
        replay = ReplayConfiguration(
            source_job_id=source.job_id, expected_model_sha256=source.summary.model_sha256
        )
        if source.HasField("search"):
            # The recorded final configuration, refit on every row: no search again.
            replay.refit_params.update(source.summary.effective_params)
            replay.validation = source.summary.search.validation
        return job, replay

    # -- cancel ------------------------------------------------------------------------

    async def CancelTrainingJob(
        self, request: CancelTrainingJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> TrainingJob:
        job = await self._cancel(validate_job_id(request.job_id), TrainingJob)
        assert isinstance(job, TrainingJob)
        return job

    async def _cancel(self, job_id: str, kind: type[Job]) -> Job:
        """Cancel a job of `kind`: CANCELLED at once when QUEUED, CANCELLING (and the
        Trainer told through the cancellations bucket) when RUNNING."""
        now = datetime.now(UTC)
        noun = SCORING if kind is ScoringJob else TRAINING

        def decide(job: Job) -> Decision | None:
            if not isinstance(job, kind):
                raise job_not_found(job_id, noun)
            if is_final(job.state):
                raise failed_precondition(
                    reasons.JOB_ALREADY_FINISHED,
                    f"{noun} job {job_id} is already {state_name(job)}",
                    job_id=job_id,
                    state=state_name(job),
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
                    f"{noun} job {job_id} kept changing; retry the cancel",
                    job_id=job_id,
                ) from error
            if outcome.job is None:
                raise job_not_found(job_id, noun)
            if outcome.changed:
                self._relay.wake()
                await self._raise_cancel_flag(job_id)
                logger.info("cancel requested", extra={"state": state_name(outcome.job)})
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
                if not isinstance(job, TrainingJob):
                    raise job_not_found(job_id)
                yield WatchTrainingJobResponse(training_job=job)

    # -- scoring jobs --------------------------------------------------------------------

    async def CreateScoringJob(
        self, request: CreateScoringJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ScoringJob:
        validate_create_scoring(request, self._settings)
        if request.request_id:
            existing = await self._store.find_by_request_id(request.request_id)
            if existing is not None:
                return _of_kind(existing, ScoringJob, request.request_id)
        dataset, version = await self._check_scoring_dependencies(request)
        job = self._new_scoring_job(request, dataset, version)
        self._relay.continue_trace(job.job_id)
        try:
            await self._store.insert(job, [training_request_entry(_scoring_request(job))])
        except DuplicateRequestId:
            existing = await self._store.find_by_request_id(request.request_id)
            assert existing is not None
            return _of_kind(existing, ScoringJob, request.request_id)
        self._relay.wake()
        with log_context(job_id=job.job_id):
            logger.info(
                "scoring job queued",
                extra={
                    "dataset_id": job.dataset_id,
                    "model": job.model_name,
                    "model_version": job.model_version,
                },
            )
        return job

    async def _check_scoring_dependencies(
        self, request: CreateScoringJobRequest
    ) -> tuple[ReadyDataset, int]:
        """The dataset (with the pass-through columns) and the model version, asked
        concurrently; the dataset's error wins."""
        dataset, version = await asyncio.gather(
            self._datasets.check_columns(request.dataset_id, list(request.pass_through_columns)),
            self._params.model_version(
                request.model_name,
                request.model_version,
                request.model_alias or DEFAULT_ALIAS,
            ),
            return_exceptions=True,
        )
        if isinstance(dataset, BaseException):
            raise dataset
        if isinstance(version, BaseException):
            raise version
        return dataset, version

    def _new_scoring_job(
        self, request: CreateScoringJobRequest, dataset: ReadyDataset, version: int
    ) -> ScoringJob:
        default_name = f"{dataset.display_name or dataset.dataset_id}-scored-"
        default_name += f"{request.model_name}-v{version}"
        job = ScoringJob(
            job_id=uuid.uuid4().hex,
            dataset_id=dataset.dataset_id,
            model_name=request.model_name,
            model_version=version,
            model_alias="" if request.model_version else request.model_alias or DEFAULT_ALIAS,
            pass_through_columns=request.pass_through_columns,
            class_probabilities=request.class_probabilities,
            explain=request.explain,
            output_display_name=request.output_display_name
            or default_name[:MAX_OUTPUT_DISPLAY_NAME],
            request_id=request.request_id,
            state=ScoringJob.QUEUED,
            attempt=0,
        )
        job.max_run_duration.FromTimedelta(max_run_duration(request, self._settings))
        now = datetime.now(UTC)
        job.create_time.FromDatetime(now)
        job.update_time.FromDatetime(now)
        return job

    async def GetScoringJob(
        self, request: GetScoringJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ScoringJob:
        job_id = validate_job_id(request.job_id)
        found = await self._store.get(job_id)
        if found is None or not isinstance(found.job, ScoringJob):
            raise job_not_found(job_id, SCORING)
        return found.job

    async def ListScoringJobs(
        self, request: ListScoringJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ListScoringJobsResponse:
        # "kind" keeps a training list's token from paging a scoring list (and the
        # other way round) although both lists take the same filters.
        filters = {"state": request.state, "dataset_id": request.dataset_id, "kind": SCORING}
        jobs, next_token = await self._list_jobs(request, filters, ScoringJob)
        return ListScoringJobsResponse(scoring_jobs=jobs, next_page_token=next_token)

    async def CancelScoringJob(
        self, request: CancelScoringJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ScoringJob:
        job = await self._cancel(validate_job_id(request.job_id), ScoringJob)
        assert isinstance(job, ScoringJob)
        return job

    async def WatchScoringJob(
        self, request: WatchScoringJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[WatchScoringJobResponse]:
        job_id = validate_job_id(request.job_id)
        with log_context(job_id=job_id):
            async for job in self._watcher.watch(job_id):
                if not isinstance(job, ScoringJob):
                    raise job_not_found(job_id, SCORING)
                yield WatchScoringJobResponse(scoring_job=job)


def _of_kind(existing: Job, kind: type[JobT], request_id: str) -> JobT:
    """The job a repeated request_id created; refused when a job of the other kind has it."""
    if not isinstance(existing, kind):
        raise failed_precondition(
            reasons.REQUEST_ID_IN_USE,
            f"request_id {request_id!r} belongs to {kind_of(existing)} job {existing.job_id}",
            job_id=existing.job_id,
        )
    return existing


def _scoring_request(job: ScoringJob) -> TrainingRequest:
    """A scoring job travels as a TrainingRequest with `scoring` set (same subject,
    stream and consumer as training)."""
    request = TrainingRequest(
        job_id=job.job_id,
        dataset_id=job.dataset_id,
        project_id=job.project_id or current_caller().project,
        scoring=ScoringRequest(
            model_name=job.model_name,
            model_version=job.model_version,
            pass_through_columns=job.pass_through_columns,
            class_probabilities=job.class_probabilities,
            output_display_name=job.output_display_name,
            explain=job.explain,
        ),
    )
    request.max_run_duration.CopyFrom(job.max_run_duration)
    request.create_time.CopyFrom(job.create_time)
    return request


def _check_replayable(source: TrainingJob) -> None:
    if source.state != TrainingJob.SUCCEEDED:
        state = TrainingJob.State.Name(source.state)
        raise failed_precondition(
            reasons.JOB_NOT_SUCCEEDED,
            f"training job {source.job_id} is {state}: only a SUCCEEDED job can be replayed",
            job_id=source.job_id,
            state=state,
        )
    if not source.summary.model_sha256:
        raise failed_precondition(
            reasons.JOB_NOT_REPLAYABLE,
            f"training job {source.job_id} recorded no model sha256 (it was trained before "
            "modelyard recorded them): there is nothing to compare a replay with",
            job_id=source.job_id,
        )


def _estimate_request(
    request: CreateTrainingJobRequest, dataset_id: str
) -> EstimateTrainingRequest:
    estimate = EstimateTrainingRequest(
        dataset_id=dataset_id,
        target_column=request.target_column,
        params=request.params,
        search=request.HasField("search"),
        search_max_trials=request.search.max_trials,
    )
    if request.search.HasField("budget"):
        estimate.search_budget.CopyFrom(request.search.budget)
    return estimate


def _over_memory_limit(quote: EstimateTrainingResponse, dataset_id: str) -> ServiceError:
    mib = 1024 * 1024
    return failed_precondition(
        reasons.TRAINING_MEMORY_LIMIT_EXCEEDED,
        f"the Trainer expects this job to need {quote.peak_memory_bytes / mib:,.0f} MiB at its "
        f"peak, more than its limit of {quote.memory_limit_bytes / mib:,.0f} MiB "
        f"({quote.basis}); use fewer rows or columns, or raise MODELYARD_TRAINER_MEMORY_LIMIT_MIB",
        dataset_id=dataset_id,
        limit_bytes=str(quote.memory_limit_bytes),
    )


def _training_request(
    job: TrainingJob, replay: ReplayConfiguration | None = None
) -> TrainingRequest:
    request = TrainingRequest(
        job_id=job.job_id,
        dataset_id=job.dataset_id,
        target_column=job.target_column,
        task=job.task,
        params=job.params,
        registered_model_name=job.registered_model_name,
        project_id=job.project_id or current_caller().project,
    )
    request.max_run_duration.CopyFrom(job.max_run_duration)
    request.create_time.CopyFrom(job.create_time)
    if job.HasField("search"):
        request.search.CopyFrom(job.search)
    if replay is not None:
        request.replay.CopyFrom(replay)
    return request


def report_not_found(job: TrainingJob) -> ServiceError:
    """NOT_FOUND for a job without a report, saying why it has none."""
    state = TrainingJob.State.Name(job.state)
    if job.state != TrainingJob.State.SUCCEEDED:
        why = f"the job is {state}: a report comes with a SUCCEEDED job"
    elif job.HasField("search"):
        why = "the search was trained before searches had reports"
    else:
        why = "the job was trained before reports were kept, or recovered after its Trainer stopped"
    return not_found(
        reasons.REPORT_NOT_FOUND,
        f"training job {job.job_id} has no report: {why}",
        job_id=job.job_id,
        state=state,
    )
