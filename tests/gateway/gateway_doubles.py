"""Test doubles of the three services, and a gateway process to test.

The doubles are small grpc.aio servicers on free ports behind the real
`runtime.server.GrpcServer` (so the service token is checked): they record
what the gateway sent and answer what a test asks for, chosen by the id in the
request (`error-NOT_FOUND`, `slow`, `breaks`...). The gateway under test is
the real thing, `python -m gateway`.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.api import httpbody_pb2
from google.protobuf import empty_pb2
from pydantic import SecretStr

from devstack.processes import ManagedProcess, free_port
from modelyard.access.v1 import access_service_pb2 as access_pb
from modelyard.access.v1 import access_service_pb2_grpc
from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from modelyard.jobs.v1 import (
    jobs_service_pb2,
    jobs_service_pb2_grpc,
    scoring_job_pb2,
    training_job_pb2,
)
from modelyard.training.v1 import model_pb2, trainer_service_pb2, trainer_service_pb2_grpc
from runtime.errors import ServiceError
from runtime.server import GrpcServer
from runtime.settings import CommonSettings

SERVICE_TOKEN = "fake-service-token-for-gateway-tests"
API_TOKENS = ("token-one", "token-two")
CORS_ORIGIN = "http://app.example"
BODY_LIMIT = 64 * 1024
DOWNLOAD_CHUNKS = (b"a,b,label\n", b"1,2,yes\n" * 1000, b"3,4,no\n")
ARROW_PIECES = (b"ARROW-SCHEMA", b"BATCH-1", b"BATCH-2")
ERROR_PREFIX = "error-"
# The id of a dataset or job the fakes answer NOT_FOUND with the services' own reason.
MISSING = "missing"
# Project API tokens the access double knows: a viewer and a trainer of `team-b`.
VIEWER_TOKEN = "myk_0123456789abcdef_viewer-secret"
TRAINER_TOKEN = "myk_fedcba9876543210_trainer-secret"
EXPIRED_TOKEN = "myk_00000000000000ee_expired-secret"
PROJECT_TOKENS = {VIEWER_TOKEN: access_pb.ROLE_VIEWER, TRAINER_TOKEN: access_pb.ROLE_TRAINER}


@dataclass
class Recorder:
    """What the fakes received, for tests to look at."""

    requests: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    deadlines: dict[str, float | None] = field(default_factory=dict)
    uploads: list[UploadRecord] = field(default_factory=list)
    watch_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.requests.clear()
        self.metadata.clear()
        self.deadlines.clear()
        self.uploads.clear()
        self.watch_cancelled.clear()

    def record(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.requests[method] = request
        self.metadata[method] = {key: str(value) for key, value in context.invocation_metadata()}
        self.deadlines[method] = context.time_remaining()


@dataclass
class UploadRecord:
    header: dataset_service_pb2.UploadDatasetHeader | None = None
    chunk_sizes: list[int] = field(default_factory=list)
    first_chunk_at: float | None = None
    finished: bool = False
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    sha256: Any = field(default_factory=hashlib.sha256)

    @property
    def total_bytes(self) -> int:
        return sum(self.chunk_sizes)


def _error_for(name: str) -> ServiceError | None:
    """`error-NOT_FOUND` → a ServiceError with that code and reason FAKE_NOT_FOUND."""
    if not name.startswith(ERROR_PREFIX):
        return None
    code = grpc.StatusCode[name.removeprefix(ERROR_PREFIX)]
    return ServiceError(code, f"FAKE_{code.name}", f"fake failure {code.name}", {"name": name})


def sample_job(job_id: str) -> training_job_pb2.TrainingJob:
    job = training_job_pb2.TrainingJob(
        job_id=job_id,
        dataset_id="ds-1",
        target_column="label",
        task=training_job_pb2.TrainingJob.BINARY,
        state=training_job_pb2.TrainingJob.RUNNING,
        attempt=1,
        params={"num_leaves": "31"},
        metrics={"accuracy": 0.93, "roc_auc": float("nan")},
    )
    job.create_time.FromSeconds(1_700_000_000)
    job.max_run_duration.FromSeconds(3600)
    job.mlflow.registered_model_version = 7
    job.summary.rows_used = 569
    job.progress.iteration = 12
    return job


class FakeDatasets(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[dataset_service_pb2.UploadDatasetRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_pb2.Dataset:
        record = UploadRecord()
        self.recorder.uploads.append(record)
        self.recorder.record("UploadDataset", None, context)
        try:
            async for message in request_iterator:
                if message.HasField("header"):
                    record.header = message.header
                    if message.header.display_name.startswith(ERROR_PREFIX):
                        error = _error_for(message.header.display_name)
                        assert error is not None
                        raise error
                    continue
                if record.first_chunk_at is None:
                    record.first_chunk_at = time.monotonic()
                record.chunk_sizes.append(len(message.chunk))
                record.sha256.update(message.chunk)
                if message.chunk.startswith(b"LIMIT"):
                    raise ServiceError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, "UPLOAD_TOO_LARGE", "too large"
                    )
            # Ingest work. A call the client cancelled ends the request iterator like a
            # complete upload does (grpc.aio); the cancellation lands at the next await.
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            record.cancelled.set()
            raise
        record.finished = True
        assert record.header is not None
        if not record.chunk_sizes:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "CSV_EMPTY", "the file is empty")
        return dataset_pb2.Dataset(
            dataset_id="ds-new",
            display_name=record.header.display_name,
            state=dataset_pb2.Dataset.READY,
            size_bytes=record.total_bytes,
            sha256=record.sha256.hexdigest(),
            request_id=record.header.request_id,
            csv_options=dataset_pb2.CsvOptions(
                delimiter=record.header.delimiter or ",",
                has_header=record.header.has_header
                if record.header.HasField("has_header")
                else True,
            ),
        )

    async def GetDataset(
        self,
        request: dataset_service_pb2.GetDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_pb2.Dataset:
        self.recorder.record("GetDataset", request, context)
        error = _error_for(request.dataset_id)
        if error:
            raise error
        return dataset_pb2.Dataset(
            dataset_id=request.dataset_id,
            display_name="iris",
            state=dataset_pb2.Dataset.READY,
            row_count=150,
            columns=[
                dataset_pb2.Column(
                    name="sepal_length",
                    data_type=dataset_pb2.Column.FLOAT,
                    profile=dataset_pb2.ColumnProfile(
                        null_count=0, numeric=dataset_pb2.NumericSummary(min=4.3, max=7.9)
                    ),
                )
            ],
        )

    async def ListDatasets(
        self,
        request: dataset_service_pb2.ListDatasetsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_service_pb2.ListDatasetsResponse:
        self.recorder.record("ListDatasets", request, context)
        return dataset_service_pb2.ListDatasetsResponse(next_page_token="next")

    async def ListDatasetVersions(
        self,
        request: dataset_service_pb2.ListDatasetVersionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_service_pb2.ListDatasetVersionsResponse:
        self.recorder.record("ListDatasetVersions", request, context)
        return dataset_service_pb2.ListDatasetVersionsResponse()

    async def LookupDataset(
        self,
        request: dataset_service_pb2.LookupDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_service_pb2.LookupDatasetResponse:
        self.recorder.record("LookupDataset", request, context)
        error = _error_for(request.reference)
        if error:
            raise error
        return dataset_service_pb2.LookupDatasetResponse(
            dataset=dataset_pb2.Dataset(
                dataset_id="d1", display_name=request.reference, state=dataset_pb2.Dataset.READY
            )
        )

    async def DeleteDataset(
        self,
        request: dataset_service_pb2.DeleteDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> empty_pb2.Empty:
        self.recorder.record("DeleteDataset", request, context)
        return empty_pb2.Empty()

    async def DownloadDataset(
        self,
        request: dataset_service_pb2.DownloadDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        self.recorder.record("DownloadDataset", request, context)
        error = _error_for(request.dataset_id)
        if error:
            raise error
        for chunk in DOWNLOAD_CHUNKS:
            yield httpbody_pb2.HttpBody(content_type="text/csv", data=chunk)
            if request.dataset_id == "breaks":
                raise ServiceError(grpc.StatusCode.DATA_LOSS, "BLOB_MISSING", "blob gone")

    async def ReadDataset(
        self,
        request: dataset_service_pb2.ReadDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[dataset_service_pb2.ReadDatasetResponse]:
        self.recorder.record("ReadDataset", request, context)
        for piece in ARROW_PIECES:
            yield dataset_service_pb2.ReadDatasetResponse(arrow_ipc=piece)

    async def GetParquetAccess(
        self,
        request: dataset_service_pb2.GetParquetAccessRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_service_pb2.GetParquetAccessResponse:
        self.recorder.record("GetParquetAccess", request, context)
        error = _error_for(request.dataset_id)
        if error:
            raise error
        return dataset_service_pb2.GetParquetAccessResponse(
            dataset_id=request.dataset_id,
            url=f"file:///blobs/datasets/{request.dataset_id}/data.parquet",
            size_bytes=1234,
            row_count=3,
        )


class FakeJobs(jobs_service_pb2_grpc.JobsServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def CreateTrainingJob(
        self,
        request: jobs_service_pb2.CreateTrainingJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> training_job_pb2.TrainingJob:
        self.recorder.record("CreateTrainingJob", request, context)
        if not request.dataset_id or not request.target_column:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "FIELD_REQUIRED", "missing")
        if request.dataset_id == MISSING:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND", "dataset missing does not exist"
            )
        job = training_job_pb2.TrainingJob(
            job_id="job-new",
            dataset_id=request.dataset_id,
            target_column=request.target_column,
            task=request.task,
            params=request.params,
            registered_model_name=request.registered_model_name,
            request_id=request.request_id,
            state=training_job_pb2.TrainingJob.QUEUED,
        )
        if request.HasField("max_run_duration"):
            job.max_run_duration.CopyFrom(request.max_run_duration)
        return job

    async def GetTrainingJob(
        self,
        request: jobs_service_pb2.GetTrainingJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> training_job_pb2.TrainingJob:
        self.recorder.record("GetTrainingJob", request, context)
        error = _error_for(request.job_id)
        if error:
            raise error
        if request.job_id == MISSING:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", "training job missing does not exist"
            )
        if request.job_id == "slow":
            await asyncio.sleep(5)
        return sample_job(request.job_id)

    async def ListTrainingJobs(
        self,
        request: jobs_service_pb2.ListTrainingJobsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> jobs_service_pb2.ListTrainingJobsResponse:
        self.recorder.record("ListTrainingJobs", request, context)
        return jobs_service_pb2.ListTrainingJobsResponse(
            training_jobs=[sample_job("job-1"), sample_job("job-2")]
        )

    async def CancelTrainingJob(
        self,
        request: jobs_service_pb2.CancelTrainingJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> training_job_pb2.TrainingJob:
        self.recorder.record("CancelTrainingJob", request, context)
        job = sample_job(request.job_id)
        job.state = training_job_pb2.TrainingJob.CANCELLING
        return job

    async def WatchTrainingJob(
        self,
        request: jobs_service_pb2.WatchTrainingJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[jobs_service_pb2.WatchTrainingJobResponse]:
        self.recorder.record("WatchTrainingJob", request, context)
        error = _error_for(request.job_id)
        if error:
            raise error
        job = sample_job(request.job_id)
        try:
            states = training_job_pb2.TrainingJob
            for state in (states.QUEUED, states.RUNNING, states.SUCCEEDED):
                job.state = state
                yield jobs_service_pb2.WatchTrainingJobResponse(training_job=job)
                if request.job_id == "idle":
                    await asyncio.sleep(1.3)  # longer than two keep-alive intervals
                if request.job_id == "breaks" and state == states.RUNNING:
                    raise ServiceError(grpc.StatusCode.INTERNAL, "TRAINER_LOST", "trainer lost")
                if request.job_id == "forever":
                    await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.recorder.watch_cancelled.set()
            raise

    async def ListTrials(
        self,
        request: jobs_service_pb2.ListTrialsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> jobs_service_pb2.ListTrialsResponse:
        self.recorder.record("ListTrials", request, context)
        trial = training_job_pb2.Trial(
            number=0, state=training_job_pb2.Trial.STATE_COMPLETE, metric_name="rmse"
        )
        return jobs_service_pb2.ListTrialsResponse(trials=[trial])

    async def GetTrainingJobReport(
        self,
        request: jobs_service_pb2.GetTrainingJobReportRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> jobs_service_pb2.GetTrainingJobReportResponse:
        self.recorder.record("GetTrainingJobReport", request, context)
        report = training_job_pb2.EvaluationReport(job_id=request.job_id, validation_rows=2)
        return jobs_service_pb2.GetTrainingJobReportResponse(report=report)

    async def EstimateTrainingJob(
        self,
        request: jobs_service_pb2.EstimateTrainingJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> jobs_service_pb2.EstimateTrainingJobResponse:
        self.recorder.record("EstimateTrainingJob", request, context)
        return jobs_service_pb2.EstimateTrainingJobResponse(
            dataset_id=request.job.dataset_id, trials=1, fits_memory_limit=True
        )

    async def ReplayTrainingJob(
        self,
        request: jobs_service_pb2.ReplayTrainingJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> jobs_service_pb2.ReplayTrainingJobResponse:
        self.recorder.record("ReplayTrainingJob", request, context)
        job = sample_job("job-replay")
        job.state = training_job_pb2.TrainingJob.QUEUED
        job.replay.source_job_id = request.job_id
        return jobs_service_pb2.ReplayTrainingJobResponse(training_job=job)

    # -- scoring jobs: the gateway's routes to them, nothing more ---------------------

    async def CreateScoringJob(
        self,
        request: jobs_service_pb2.CreateScoringJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> scoring_job_pb2.ScoringJob:
        self.recorder.record("CreateScoringJob", request, context)
        if not request.dataset_id or not request.model_name:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "FIELD_REQUIRED", "missing")
        job = sample_scoring_job("scoring-new")
        job.dataset_id = request.dataset_id
        job.model_name = request.model_name
        job.state = scoring_job_pb2.ScoringJob.QUEUED
        return job

    async def GetScoringJob(
        self,
        request: jobs_service_pb2.GetScoringJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> scoring_job_pb2.ScoringJob:
        self.recorder.record("GetScoringJob", request, context)
        if request.job_id == MISSING:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", "scoring job missing does not exist"
            )
        return sample_scoring_job(request.job_id)

    async def ListScoringJobs(
        self,
        request: jobs_service_pb2.ListScoringJobsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> jobs_service_pb2.ListScoringJobsResponse:
        self.recorder.record("ListScoringJobs", request, context)
        return jobs_service_pb2.ListScoringJobsResponse(
            scoring_jobs=[sample_scoring_job("scoring-1")]
        )

    async def CancelScoringJob(
        self,
        request: jobs_service_pb2.CancelScoringJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> scoring_job_pb2.ScoringJob:
        self.recorder.record("CancelScoringJob", request, context)
        job = sample_scoring_job(request.job_id)
        job.state = scoring_job_pb2.ScoringJob.CANCELLING
        return job

    async def WatchScoringJob(
        self,
        request: jobs_service_pb2.WatchScoringJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[jobs_service_pb2.WatchScoringJobResponse]:
        self.recorder.record("WatchScoringJob", request, context)
        job = sample_scoring_job(request.job_id)
        for state in (scoring_job_pb2.ScoringJob.RUNNING, scoring_job_pb2.ScoringJob.SUCCEEDED):
            job.state = state
            yield jobs_service_pb2.WatchScoringJobResponse(scoring_job=job)


def sample_scoring_job(job_id: str) -> scoring_job_pb2.ScoringJob:
    job = scoring_job_pb2.ScoringJob(
        job_id=job_id,
        dataset_id="ds-1",
        model_name="churn",
        model_version=3,
        state=scoring_job_pb2.ScoringJob.RUNNING,
        attempt=1,
    )
    job.create_time.FromSeconds(1_700_000_000)
    job.progress.rows_done = 65_536
    job.progress.rows_total = 100_000
    return job


class FakeTrainer(trainer_service_pb2_grpc.TrainerServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def ListModels(
        self,
        request: trainer_service_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trainer_service_pb2.ListModelsResponse:
        self.recorder.record("ListModels", request, context)
        return trainer_service_pb2.ListModelsResponse(
            models=[model_pb2.Model(name="churn", latest_version=2, champion_version=1)]
        )

    async def GetModel(
        self,
        request: trainer_service_pb2.GetModelRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> model_pb2.Model:
        self.recorder.record("GetModel", request, context)
        error = _error_for(request.model_name)
        if error:
            raise error
        version = model_pb2.ModelVersion(version=1, aliases=["champion"], metrics={"rmse": 0.5})
        return model_pb2.Model(name=request.model_name, versions=[version], latest_version=1)

    async def ValidateTrainingParams(
        self,
        request: trainer_service_pb2.ValidateTrainingParamsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trainer_service_pb2.ValidateTrainingParamsResponse:
        self.recorder.record("ValidateTrainingParams", request, context)
        return trainer_service_pb2.ValidateTrainingParamsResponse(params=request.params)

    async def EstimateTraining(
        self,
        request: trainer_service_pb2.EstimateTrainingRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trainer_service_pb2.EstimateTrainingResponse:
        self.recorder.record("EstimateTraining", request, context)
        return trainer_service_pb2.EstimateTrainingResponse(trials=1, fits_memory_limit=True)

    async def Predict(
        self,
        request: trainer_service_pb2.PredictRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trainer_service_pb2.PredictResponse:
        self.recorder.record("Predict", request, context)
        if not request.rows:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "ROWS_REQUIRED", "no rows")
        response = trainer_service_pb2.PredictResponse(
            model_name=request.model_name,
            model_version=request.version or 3,
            class_names=["no", "yes"],
        )
        for _ in request.rows:
            prediction = response.predictions.add(probabilities=[0.25, 0.75])
            prediction.value.string_value = "yes"
        return response


class FakeAccess(access_service_pb2_grpc.AccessServiceServicer):
    """Answers the admin RPCs with sample projects and tokens; knows PROJECT_TOKENS."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    @staticmethod
    def _project(project_id: str) -> access_pb.Project:
        return access_pb.Project(project_id=project_id or "default", display_name="P")

    @staticmethod
    def _token(project_id: str, token_id: str = "0123456789abcdef") -> access_pb.ApiToken:
        token = access_pb.ApiToken(
            token_id=token_id, project_id=project_id, role=access_pb.ROLE_VIEWER
        )
        token.create_time.FromSeconds(1_800_000_000)
        token.expire_time.FromSeconds(1_900_000_000)
        return token

    async def CreateProject(
        self, request: access_pb.CreateProjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> access_pb.CreateProjectResponse:
        self.recorder.record("CreateProject", request, context)
        return access_pb.CreateProjectResponse(project=self._project(request.project_id))

    async def GetProject(
        self, request: access_pb.GetProjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> access_pb.GetProjectResponse:
        self.recorder.record("GetProject", request, context)
        return access_pb.GetProjectResponse(project=self._project(request.project_id))

    async def ListProjects(
        self, request: access_pb.ListProjectsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> access_pb.ListProjectsResponse:
        self.recorder.record("ListProjects", request, context)
        return access_pb.ListProjectsResponse(projects=[self._project("default")])

    async def CreateApiToken(
        self, request: access_pb.CreateApiTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> access_pb.CreateApiTokenResponse:
        self.recorder.record("CreateApiToken", request, context)
        return access_pb.CreateApiTokenResponse(
            api_token=self._token(request.project_id), secret=VIEWER_TOKEN
        )

    async def ListApiTokens(
        self, request: access_pb.ListApiTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> access_pb.ListApiTokensResponse:
        self.recorder.record("ListApiTokens", request, context)
        return access_pb.ListApiTokensResponse(api_tokens=[self._token(request.project_id)])

    async def DeleteApiToken(
        self, request: access_pb.DeleteApiTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> access_pb.DeleteApiTokenResponse:
        self.recorder.record("DeleteApiToken", request, context)
        token = self._token(request.project_id, request.token_id)
        token.revoke_time.FromSeconds(1_850_000_000)
        return access_pb.DeleteApiTokenResponse(api_token=token)

    async def AuthenticateApiToken(
        self,
        request: access_pb.AuthenticateApiTokenRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> access_pb.AuthenticateApiTokenResponse:
        self.recorder.record("AuthenticateApiToken", request, context)
        reason = "API_TOKEN_EXPIRED" if request.token == EXPIRED_TOKEN else "API_TOKEN_INVALID"
        if request.token not in PROJECT_TOKENS:
            raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, reason, "not a token")
        reply = access_pb.AuthenticateApiTokenResponse(
            project_id="team-b", role=PROJECT_TOKENS[request.token], token_id=request.token[4:20]
        )
        reply.expire_time.FromSeconds(int(time.time()) + 3600)
        return reply


@dataclass
class Fakes:
    recorder: Recorder
    addresses: dict[str, str]
    servers: list[GrpcServer]


async def start_fakes(state_dir: Path) -> Fakes:
    settings = CommonSettings(
        service_token=SecretStr(SERVICE_TOKEN), state_dir=state_dir, shutdown_grace_seconds=0.5
    )
    recorder = Recorder()
    addresses: dict[str, str] = {}
    servers: list[GrpcServer] = []
    for name, servicer, add, descriptor in (
        (
            "dataset",
            FakeDatasets(recorder),
            dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server,
            dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"],
        ),
        (
            "jobs",
            FakeJobs(recorder),
            jobs_service_pb2_grpc.add_JobsServiceServicer_to_server,
            jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"],
        ),
        (
            "trainer",
            FakeTrainer(recorder),
            trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server,
            trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"],
        ),
    ):
        addresses[name] = f"127.0.0.1:{free_port()}"
        server = GrpcServer(settings, addresses[name])
        add(servicer, server.server)  # type: ignore[arg-type]
        server.enable(descriptor)
        if name == "jobs":  # the Jobs service serves AccessService too
            access_service_pb2_grpc.add_AccessServiceServicer_to_server(
                FakeAccess(recorder), server.server
            )
            server.enable(access_pb.DESCRIPTOR.services_by_name["AccessService"])
        await server.start()
        servers.append(server)
    return Fakes(recorder, addresses, servers)


# The dev gateway's MODELYARD_GATEWAY_PUBLIC_URL (given with a trailing slash).
PUBLIC_URL = "https://modelyard.example.com"


@dataclass
class GatewayProcess:
    process: ManagedProcess
    url: str
    state_dir: Path

    def logs(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def client(self, token: str | None = API_TOKENS[0], **kwargs: Any) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, **{"timeout": 30, **kwargs})


async def start_gateway(
    directory: Path, addresses: dict[str, str], env: dict[str, str]
) -> GatewayProcess:
    port = free_port()
    state_dir = directory / "state"
    process = ManagedProcess(
        name="gateway",
        command=[sys.executable, "-m", "gateway"],
        env={
            "MODELYARD_GATEWAY_HOST": "127.0.0.1",
            "MODELYARD_GATEWAY_PORT": str(port),
            "MODELYARD_GATEWAY_DATASET_SERVICE_ADDRESS": addresses["dataset"],
            "MODELYARD_GATEWAY_JOBS_SERVICE_ADDRESS": addresses["jobs"],
            "MODELYARD_GATEWAY_TRAINER_SERVICE_ADDRESS": addresses["trainer"],
            "MODELYARD_SERVICE_TOKEN": SERVICE_TOKEN,
            "MODELYARD_STATE_DIR": str(state_dir),
            "MODELYARD_LOG_LEVEL": "INFO",
            "MODELYARD_GATEWAY_API_TOKENS": "",
            "MODELYARD_GATEWAY_DEV_MODE": "false",
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        log_path=directory / "gateway.log",
    ).start()
    gateway = GatewayProcess(process, f"http://127.0.0.1:{port}", state_dir)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=1) as client:
        deadline = time.monotonic() + 60
        while True:
            if not process.running():
                raise RuntimeError(f"gateway exited early:\n{process.log_tail()}")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return gateway
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                process.stop()
                raise TimeoutError(f"gateway not ready:\n{process.log_tail()}")
            await asyncio.sleep(0.1)
