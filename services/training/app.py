"""The Trainer assembled: the MLflow client, TrainerService and, with worker slots,
the NATS worker that trains jobs, opened in order and closed in reverse
(`runtime.app.App`).

On SIGTERM the gRPC server (health NOT_SERVING, then calls in flight finish) and
the worker (no new fetches; running jobs get the grace, then are handed back)
stop together; then NATS is drained and the MLflow client and training threads
are let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

import mlflow
from nats.aio.client import Client as NatsClient

from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from runtime.access_client import ApiTokenChecker
from runtime.app import App
from runtime.channels import open_channel
from runtime.messaging import (
    CANCELLATIONS_BUCKET,
    JOB_EVENTS_STREAM,
    LOCKS_BUCKET,
    TRAINING_REQUESTS_STREAM,
    connect_at_start,
    wait_for_setup,
)
from runtime.server import GrpcServer
from services.training.batch.output import DatasetWriter
from services.training.fit.dataset_reader import DatasetReader
from services.training.fit.estimate import CostBook
from services.training.servicer import TrainerServicer
from services.training.serving.cache import ModelCache
from services.training.serving.catalog import ModelCatalog
from services.training.settings import TrainerSettings
from services.training.tracking.calls import MlflowTimings, MlflowUnavailable
from services.training.tracking.credentials import configure_mlflow_client, redactor
from services.training.tracking.runs import Tracker
from services.training.work.events import EventPublisher, trainer_source
from services.training.work.jobs_check import JobDirectory
from services.training.work.locks import NatsChampionLock, locks_bucket
from services.training.work.runner import JobRunner
from services.training.work.worker import TrainerWorker, training_executor

logger = logging.getLogger("modelyard.trainer")

NATS_DRAIN_SECONDS = 10.0


class TrainerApp(App):
    def __init__(self, settings: TrainerSettings) -> None:
        super().__init__()
        self.settings = settings

    async def _open(self, stack: AsyncExitStack) -> None:
        settings = self.settings
        stack.callback(logger.info, "trainer stopped")  # the last thing closing does
        redact = redactor(settings)
        configure_mlflow_client(settings)
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        mlflow.set_registry_uri(settings.mlflow_tracking_uri)
        executor = training_executor(settings.worker_slots)
        stack.callback(executor.shutdown, wait=False, cancel_futures=True)
        tracker = Tracker(
            tracking_uri=settings.mlflow_tracking_uri,
            experiment_name=settings.mlflow_experiment_name,
            ui_url=settings.mlflow_ui_url(),
            model_description=settings.registered_model_description,
            work_dir=settings.resolved_work_dir(),
        )
        stack.callback(tracker.close)
        with contextlib.suppress(MlflowUnavailable):  # looked up again by the first job
            await asyncio.to_thread(tracker.experiment_id, MlflowTimings())

        # Project API tokens presented here are checked with the Jobs service.
        tokens = ApiTokenChecker(
            settings.jobs_service_address, settings, settings.api_token_cache_seconds
        )
        stack.push_async_callback(tokens.close)
        server = GrpcServer(
            settings,
            settings.listen_address,
            settings.metrics_address,
            resolve_api_token=tokens.caller_of,
        )
        # Quotes read dataset profiles; jobs read rows (the channel connects when used).
        dataset_channel = open_channel(settings.dataset_service_address, settings)
        stack.push_async_callback(dataset_channel.close)
        self.datasets = DatasetReader(dataset_channel, settings.rpc_timeout_seconds)
        self.costs = CostBook(settings.resolved_work_dir())
        # Scoring jobs store their output through the same channel.
        self.writer = DatasetWriter(dataset_channel)
        # One cache of loaded versions for Predict and scoring jobs.
        self.models = ModelCache(settings.predict_cache_size)
        trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server(
            TrainerServicer(
                settings,
                ModelCatalog(tracker.client),
                self.models,
                self.datasets,
                self.costs,
            ),
            server.server,
        )
        server.enable(trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"])
        worker = None
        if settings.trains_jobs():
            worker = await self._worker(stack, tracker, executor, redact)
        # Calls in flight and running jobs get the same grace, at the same time.
        serving: list[Callable[[], Awaitable[None]]] = []
        stack.push_async_callback(_stop_together, serving)
        if worker is not None:
            await worker.start()
            serving.append(functools.partial(worker.stop, settings.shutdown_grace_seconds))
        await server.start()
        serving.append(server.stop)
        logger.info(
            "trainer ready",
            extra={
                "role": settings.role,
                "worker_slots": settings.worker_slots if worker is not None else 0,
                "mlflow": redact(settings.mlflow_tracking_uri),
            },
        )

    async def _worker(
        self,
        stack: AsyncExitStack,
        tracker: Tracker,
        executor: ThreadPoolExecutor,
        redact: Callable[[str], str],
    ) -> TrainerWorker:
        """The worker and what it needs (NATS, the Dataset channel), not started yet."""
        settings = self.settings
        source = trainer_source()
        nats = await connect_at_start(
            settings.nats_url,
            source,
            settings.nats_connect_timeout_seconds,
            "MODELYARD_TRAINER_NATS_URL",
            settings.nats_credentials(),
        )
        stack.push_async_callback(_drain, nats)
        js = nats.jetstream()
        await wait_for_setup(
            js,
            (TRAINING_REQUESTS_STREAM, JOB_EVENTS_STREAM),
            (CANCELLATIONS_BUCKET, LOCKS_BUCKET),
            settings.nats_connect_timeout_seconds,
        )
        tracker.set_champion_lock(
            NatsChampionLock(await locks_bucket(js), asyncio.get_running_loop())
        )
        runner = JobRunner(
            settings,
            EventPublisher(js, source, redact),
            self.datasets,
            tracker,
            executor,
            self.costs,
            self.models,
            self.writer,
        )
        jobs_channel = open_channel(settings.jobs_service_address, settings)
        stack.push_async_callback(jobs_channel.close)
        jobs = JobDirectory(jobs_channel, settings.rpc_timeout_seconds)
        return TrainerWorker(settings, nats, runner, jobs)


async def _stop_together(stops: list[Callable[[], Awaitable[None]]]) -> None:
    await asyncio.gather(*(stop() for stop in stops))


async def _drain(nats: NatsClient) -> None:
    """Flush what is still buffered (final events) before closing; bounded."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(NATS_DRAIN_SECONDS):
            await nats.drain()
