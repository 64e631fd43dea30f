"""`python -m services.training`: TrainerService and, with worker slots, the training worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings

import mlflow

from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from runtime.channels import open_channel
from runtime.logs import configure_logging
from runtime.messaging import connect
from runtime.server import GrpcServer, wait_for_shutdown_signal
from runtime.tracing import configure_tracing, shutdown_tracing
from services.training.catalog import ModelCatalog
from services.training.credentials import configure_mlflow_client, redact_logs, redactor
from services.training.dataset_reader import DatasetReader
from services.training.events import EventPublisher, trainer_source
from services.training.job import JobRunner
from services.training.locks import NatsChampionLock, locks_bucket
from services.training.servicer import TrainerServicer
from services.training.settings import TrainerSettings
from services.training.tracking import MlflowTimings, MlflowUnavailable, Tracker
from services.training.worker import TrainerWorker, training_executor

logger = logging.getLogger("modelyard.trainer")


async def serve(settings: TrainerSettings) -> None:
    redact = redactor(settings)
    configure_mlflow_client(settings)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)

    server = GrpcServer(settings, settings.listen_address, settings.metrics_address)
    tracker = Tracker(
        tracking_uri=settings.mlflow_tracking_uri,
        experiment_name=settings.mlflow_experiment_name,
        ui_url=settings.mlflow_ui_url(),
        model_description=settings.registered_model_description,
        work_dir=settings.resolved_work_dir(),
    )
    with contextlib.suppress(MlflowUnavailable):  # looked up again by the first job
        await asyncio.to_thread(tracker.experiment_id, MlflowTimings())
    catalog = ModelCatalog(tracker.client, settings.predict_cache_size)
    trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server(
        TrainerServicer(settings, catalog), server.server
    )
    server.enable(trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"])

    worker = None
    nats = None
    dataset_channel = None
    executor = training_executor(settings.worker_slots)
    if settings.worker_slots > 0:
        source = trainer_source()
        nats = await connect(settings.nats_url, source)
        js = nats.jetstream()
        tracker.set_champion_lock(
            NatsChampionLock(await locks_bucket(js), asyncio.get_running_loop())
        )
        dataset_channel = open_channel(settings.dataset_service_address, settings)
        runner = JobRunner(
            settings,
            EventPublisher(js, source, redact),
            DatasetReader(dataset_channel, settings.rpc_timeout_seconds),
            tracker,
            executor,
        )
        worker = TrainerWorker(settings, nats, runner)
        await worker.start()
    await server.start()
    logger.info(
        "trainer ready",
        extra={
            "worker_slots": settings.worker_slots,
            "mlflow": redact(settings.mlflow_tracking_uri),
        },
    )

    await wait_for_shutdown_signal()
    stopping = [server.stop()]
    if worker is not None:
        stopping.append(worker.stop(settings.shutdown_grace_seconds))
    await asyncio.gather(*stopping)
    if nats is not None:
        await nats.drain()
    if dataset_channel is not None:
        await dataset_channel.close()
    tracker.close()
    executor.shutdown(wait=False, cancel_futures=True)
    logger.info("trainer stopped")


def main() -> None:
    settings = TrainerSettings()
    configure_logging("trainer", settings.log_level)
    configure_tracing("trainer", settings.otlp_endpoint)
    redact_logs(redactor(settings))
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightgbm")
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
