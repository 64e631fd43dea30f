"""Helpers and doubles of the Jobs service tests (the fixtures are in conftest.py).

The Jobs service runs in-process against real infrastructure: its own
nats-server with JetStream (one per test module, so the streams, consumers and
cancel flags these tests leave behind never reach another area's tests, and a
test may restart it) and PostgreSQL through `database_url_factory` (SQLite when
`MODELYARD_TEST_JOBS_DATABASE=sqlite`, to run the same tests on the embedded
default). DatasetService and TrainerService are small in-process gRPC doubles
behind the real server stack (service token, error details), and the tests act
as the Trainer themselves: they pull TrainingRequests through the real durable
consumer and publish JobEvents on the real subjects.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from devstack.components import NatsServer
from devstack.processes import free_port
from modelyard.dataset.v1 import dataset_service_pb2_grpc
from modelyard.dataset.v1.dataset_pb2 import Column, Dataset
from modelyard.dataset.v1.dataset_service_pb2 import (
    GetDatasetRequest,
    LookupDatasetRequest,
    LookupDatasetResponse,
)
from modelyard.dispatch.v1.dispatch_pb2 import JobEvent, TrainingRequest
from modelyard.jobs.v1 import jobs_service_pb2_grpc
from modelyard.jobs.v1.jobs_service_pb2 import GetTrainingJobRequest
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from modelyard.training.v1 import model_pb2, trainer_service_pb2, trainer_service_pb2_grpc
from runtime import nats_access
from runtime.channels import open_channel
from runtime.errors import invalid_argument, not_found
from runtime.messaging import (
    CANCELLATIONS_BUCKET,
    TRAINERS_CONSUMER,
    TRAINING_REQUESTS_STREAM,
    TRAINING_REQUESTS_SUBJECT,
    job_events_subject,
)
from runtime.settings import CommonSettings
from services.jobs.app import JobsApp
from services.jobs.settings import JobsSettings

SERVICE_TOKEN = "jobs-tests-" + uuid.uuid4().hex
T = TypeVar("T")


# -- doubles of the other services ------------------------------------------------------


class FakeDatasetService(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(self) -> None:
        self.datasets: dict[str, Dataset] = {}
        self.calls = 0

    def add(self, state: int = Dataset.READY, columns: tuple[str, ...] = ("x", "y")) -> str:
        dataset_id = "ds-" + uuid.uuid4().hex[:12]
        self.datasets[dataset_id] = Dataset(
            dataset_id=dataset_id,
            display_name=dataset_id,
            state=state,  # type: ignore[arg-type]
            columns=[Column(name=name, data_type=Column.FLOAT) for name in columns],
        )
        return dataset_id

    def add_version(self, name: str, version: int, columns: tuple[str, ...] = ("x", "y")) -> str:
        dataset_id = self.add(columns=columns)
        self.datasets[dataset_id].display_name = name
        self.datasets[dataset_id].version = version
        return dataset_id

    async def GetDataset(
        self, request: GetDatasetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Dataset:
        self.calls += 1
        dataset = self.datasets.get(request.dataset_id)
        if dataset is None:
            raise not_found("DATASET_NOT_FOUND", f"dataset {request.dataset_id} does not exist")
        return dataset

    async def LookupDataset(
        self, request: LookupDatasetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> LookupDatasetResponse:
        """Like the service: a display name's latest READY version, or name@version."""
        self.calls += 1
        name, _, version = request.reference.rpartition("@")
        ready = [d for d in self.datasets.values() if d.state == Dataset.READY]
        named = [d for d in ready if d.display_name == request.reference]
        if not named and version.isdigit():
            named = [d for d in ready if d.display_name == name and d.version == int(version)]
        if not named:
            raise not_found("DATASET_NOT_FOUND", f"no dataset {request.reference!r}")
        return LookupDatasetResponse(dataset=max(named, key=lambda d: d.version))


class FakeTrainerService(trainer_service_pb2_grpc.TrainerServiceServicer):
    ALLOWED = frozenset({"num_leaves", "learning_rate", "num_iterations"})

    def __init__(self) -> None:
        self.calls = 0
        self.quotes = 0
        # What EstimateTraining answers (the real cost model is the Trainer's own test).
        self.peak_memory_bytes = 100 * 1024 * 1024
        self.memory_limit_bytes = 1024 * 1024 * 1024

    async def EstimateTraining(
        self,
        request: trainer_service_pb2.EstimateTrainingRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trainer_service_pb2.EstimateTrainingResponse:
        self.quotes += 1
        response = trainer_service_pb2.EstimateTrainingResponse(
            peak_memory_bytes=self.peak_memory_bytes,
            trials=request.search_max_trials or (7 if request.search else 1),
            memory_limit_bytes=self.memory_limit_bytes,
            fits_memory_limit=self.peak_memory_bytes <= self.memory_limit_bytes,
            basis=f"double for {request.dataset_id}",
        )
        response.wall_time.FromSeconds(12)
        return response

    async def GetModel(
        self,
        request: trainer_service_pb2.GetModelRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> model_pb2.Model:
        """Every model name is registered, with version 1 as its champion."""
        champion = model_pb2.ModelVersion(version=1, aliases=["champion"])
        return model_pb2.Model(
            name=request.model_name, versions=[champion], champion_version=1, latest_version=1
        )

    async def ValidateTrainingParams(
        self,
        request: trainer_service_pb2.ValidateTrainingParamsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trainer_service_pb2.ValidateTrainingParamsResponse:
        self.calls += 1
        for name in request.params:
            if name not in self.ALLOWED:
                raise invalid_argument(
                    "PARAM_NOT_ALLOWED", f"parameter {name!r} is not allowed", params=name
                )
        return trainer_service_pb2.ValidateTrainingParamsResponse(params=request.params)


@dataclass
class Doubles:
    datasets: FakeDatasetService
    trainer: FakeTrainerService
    dataset_address: str
    trainer_address: str


def new_database_url(factory: Callable[[str], str], directory: Path, prefix: str) -> str:
    """A new, empty database: PostgreSQL from `database_url_factory`, or SQLite in
    `directory` when MODELYARD_TEST_JOBS_DATABASE=sqlite."""
    if os.environ.get("MODELYARD_TEST_JOBS_DATABASE") == "sqlite":
        return f"sqlite:///{directory / (prefix + '.db')}"
    return factory(prefix)


def common_settings(state_dir: Path) -> CommonSettings:
    return CommonSettings(service_token=SERVICE_TOKEN, state_dir=state_dir)


# -- infrastructure ----------------------------------------------------------------------


def jobs_settings(
    state_dir: Path, database_url: str, nats: NatsServer, doubles: Doubles, **overrides: Any
) -> JobsSettings:
    values: dict[str, Any] = {
        "service_token": SERVICE_TOKEN,
        "state_dir": state_dir,
        "listen_address": f"127.0.0.1:{free_port()}",
        "database_url": database_url,
        **nats.settings(nats_access.JOBS),
        "dataset_service_address": doubles.dataset_address,
        "trainer_service_address": doubles.trainer_address,
        "dependency_timeout_seconds": 2.0,
        "dataset_cache_seconds": 0.0,
        "watchdog_interval_seconds": 0.2,
        "deadline_grace_seconds": 0.5,
        "watch_refresh_seconds": 1.0,
        "shutdown_grace_seconds": 1.0,
        "nats_publish_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return JobsSettings(**values)


@dataclass
class RunningJobs:
    app: JobsApp
    settings: JobsSettings
    stub: jobs_service_pb2_grpc.JobsServiceStub
    channel: grpc.aio.Channel
    nc: NatsClient
    js: JetStreamContext
    doubles: Doubles
    trainer: TrainerDouble

    async def get(self, job_id: str) -> TrainingJob:
        job: TrainingJob = await self.stub.GetTrainingJob(
            GetTrainingJobRequest(job_id=job_id), timeout=5
        )
        return job

    async def wait_for_job(
        self, job_id: str, ready: Callable[[TrainingJob], bool], within: float = 10.0
    ) -> TrainingJob:
        return await eventually(lambda: self.get(job_id), ready, within)

    async def requests_published(self) -> int:
        """Every TrainingRequest ever stored in the stream (its last sequence)."""
        info = await self.js.stream_info(TRAINING_REQUESTS_STREAM)
        return int(info.state.last_seq)


async def start_jobs(
    settings: JobsSettings, doubles: Doubles, nats: NatsServer
) -> tuple[RunningJobs, Callable[[], Awaitable[None]]]:
    app = await JobsApp(settings).start()
    channel = open_channel(settings.listen_address, settings)
    nc = await nats.connect()
    js = nc.jetstream()
    trainer = TrainerDouble(js)
    await trainer.bind()
    running = RunningJobs(
        app,
        settings,
        jobs_service_pb2_grpc.JobsServiceStub(channel),
        channel,
        nc,
        js,
        doubles,
        trainer,
    )

    async def stop() -> None:
        await channel.close()
        await nc.close()
        await app.close()

    return running, stop


# -- the tests' own Trainer ----------------------------------------------------------------


class TrainerDouble:
    """Plays the Trainer's side of the wire contract."""

    ACK_WAIT_SECONDS = 2.0

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.subscription: JetStreamContext.PullSubscription | None = None

    async def bind(self) -> None:
        config = ConsumerConfig(
            durable_name=TRAINERS_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ACK_WAIT_SECONDS,
            max_deliver=-1,
        )
        self.subscription = await self.js.pull_subscribe(
            TRAINING_REQUESTS_SUBJECT,
            durable=TRAINERS_CONSUMER,
            stream=TRAINING_REQUESTS_STREAM,
            config=config,
        )

    async def take(self, job_id: str, within: float = 10.0) -> tuple[TrainingRequest, Msg]:
        """Fetch until the request of `job_id` arrives; other jobs' requests are acked away."""
        assert self.subscription is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                messages = await self.subscription.fetch(1, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            request = TrainingRequest.FromString(messages[0].data)
            if request.job_id == job_id:
                return request, messages[0]
            await messages[0].ack()
        raise AssertionError(f"no TrainingRequest for {job_id} within {within}s")

    async def publish(self, job_id: str, attempt: int, **kind: Any) -> JobEvent:
        """Publish a JobEvent; `kind` is one oneof member, e.g. started={} or progress={...}."""
        event = JobEvent(
            job_id=job_id,
            attempt=attempt,
            source="trainer/tests",
            event_id=uuid.uuid4().hex,
            **kind,
        )
        event.event_time.GetCurrentTime()
        await self.publish_event(event)
        return event

    async def publish_event(self, event: JobEvent) -> None:
        await self.js.publish(
            job_events_subject(event.job_id),
            event.SerializeToString(),
            headers={"Nats-Msg-Id": event.event_id},
        )

    async def cancel_flag(self, job_id: str) -> bytes | None:
        flags = await self.js.key_value(CANCELLATIONS_BUCKET)
        try:
            entry = await flags.get(job_id)
        except (NotFoundError, nats.js.errors.KeyNotFoundError):
            return None
        return entry.value


# -- helpers -------------------------------------------------------------------------------


async def eventually(
    read: Callable[[], Awaitable[T]], ready: Callable[[T], bool], within: float = 10.0
) -> T:
    deadline = time.monotonic() + within
    while True:
        value = await read()
        if ready(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


@dataclass
class Collected:
    updates: list[TrainingJob] = field(default_factory=list)
    ended: bool = False
