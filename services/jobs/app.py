"""The Jobs service assembled: database, NATS, the gRPC server and the
background loops (outbox relay, events consumer, deadline watchdog)."""

from __future__ import annotations

import logging
import os
import socket
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import grpc
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.access.v1 import access_service_pb2, access_service_pb2_grpc
from modelyard.dataset.v1.dataset_service_pb2_grpc import DatasetServiceStub
from modelyard.jobs.v1 import jobs_service_pb2, jobs_service_pb2_grpc
from modelyard.training.v1.trainer_service_pb2_grpc import TrainerServiceStub
from runtime.app import App, StartupError
from runtime.channels import open_channel
from runtime.db import create_engine, database_reachable, migrate
from runtime.messaging import (
    CANCELLATIONS_BUCKET,
    JOB_EVENTS_STREAM,
    TRAINING_REQUESTS_STREAM,
    cancellations,
    close_quietly,
    connect_at_start,
    wait_for_setup,
)
from runtime.server import GrpcServer
from services.jobs import metrics
from services.jobs.access import AccessServicer, AccessStore
from services.jobs.consumer import EventsConsumer
from services.jobs.dependencies import DatasetChecker, ParamsChecker
from services.jobs.relay import OutboxRelay, Publisher
from services.jobs.servicer import JobsServicer
from services.jobs.settings import JobsSettings
from services.jobs.store import JobStore
from services.jobs.watch import JobWatcher
from services.jobs.watchdog import DeadlineWatchdog

logger = logging.getLogger("modelyard.jobs")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class JobsApp(App):
    """Database, NATS, the background loops and the gRPC server, opened in order and
    closed in reverse (`runtime.app.App`): calls in flight finish first, then the
    loops stop, then the connections close."""

    def __init__(self, settings: JobsSettings) -> None:
        super().__init__()
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.nc: NatsClient | None = None
        self.store: JobStore | None = None
        self.relay: OutboxRelay | None = None
        self.watchdog: DeadlineWatchdog | None = None

    async def _open(self, stack: AsyncExitStack) -> None:
        settings = self.settings
        engine = self.engine = create_engine(
            settings.resolved_database_url(), pool_size=settings.database_pool_size
        )
        stack.push_async_callback(engine.dispose)
        store = self.store = await self._open_database(engine)
        stack.push_async_callback(store.close)

        nc = self.nc = await connect_at_start(
            settings.nats_url,
            f"jobs/{socket.gethostname()}-{os.getpid()}",
            settings.nats_connect_timeout_seconds,
            "MODELYARD_JOBS_NATS_URL",
            settings.nats_credentials(),
        )
        stack.push_async_callback(close_quietly, nc)
        watcher = JobWatcher(nc, store, settings.watch_refresh_seconds)
        store.add_change_listener(watcher.announce)
        js = nc.jetstream(timeout=settings.nats_publish_timeout_seconds)
        consumer = EventsConsumer(js, store, settings.events_ack_wait_seconds)
        try:
            await wait_for_setup(
                js,
                (TRAINING_REQUESTS_STREAM, JOB_EVENTS_STREAM),
                (CANCELLATIONS_BUCKET,),
                settings.nats_connect_timeout_seconds,
            )
            flags = await cancellations(js)
            subscription = await consumer.subscribe()
        except nats.errors.Error as error:
            raise StartupError(
                f"NATS at {settings.nats_url} refused the JetStream set-up "
                f"({type(error).__name__}: {error}); is JetStream enabled (nats-server -js)?"
            ) from error

        relay = self.relay = OutboxRelay(
            engine,
            Publisher(js, flags, settings.nats_publish_timeout_seconds),
            poll_seconds=settings.outbox_poll_seconds,
            batch_size=settings.outbox_batch_size,
            retention_seconds=settings.outbox_retention_seconds,
        )
        self.watchdog = DeadlineWatchdog(store, relay.wake, settings)
        if settings.fault_crash_after_commit:
            logger.warning("TEST ONLY fault point on: crash after the first create commits")
        else:  # with the relay running, a NOTIFY could publish before the crash lands
            self._background(relay.run(), "outbox-relay")
        self._background(consumer.run(subscription), "events-consumer")
        self._background(self.watchdog.run(), "deadline-watchdog")
        self._background(
            metrics.sample_forever(store, js, settings.metrics_sample_seconds), "metrics"
        )

        # API tokens presented here are checked against this service's own rows.
        access_store = AccessStore(engine)
        server = GrpcServer(
            settings,
            settings.listen_address,
            settings.metrics_address,
            resolve_api_token=access_store.caller_of,
        )
        jobs_service_pb2_grpc.add_JobsServiceServicer_to_server(
            self._servicer(stack, store, relay, watcher, flags), server.server
        )
        access_service_pb2_grpc.add_AccessServiceServicer_to_server(
            AccessServicer(settings, access_store), server.server
        )
        server.enable(
            jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"],
            access_service_pb2.DESCRIPTOR.services_by_name["AccessService"],
        )
        await server.start()
        stack.push_async_callback(server.stop)

        async def nats_connected() -> bool:
            return nc.is_connected

        async def database_up() -> bool:
            return await database_reachable(engine)

        self._background(server.follow_dependencies([nats_connected, database_up]), "readiness")
        # Open watches end first, so that the server's grace is not spent waiting on them.
        stack.callback(watcher.close)

    def _servicer(
        self,
        stack: AsyncExitStack,
        store: JobStore,
        relay: OutboxRelay,
        watcher: JobWatcher,
        flags: KeyValue,
    ) -> JobsServicer:
        settings = self.settings
        datasets = DatasetChecker(
            DatasetServiceStub(self._channel(stack, settings.dataset_service_address)),
            settings.dependency_timeout_seconds,
            settings.dataset_cache_seconds,
        )
        params = ParamsChecker(
            TrainerServiceStub(self._channel(stack, settings.trainer_service_address)),
            settings.dependency_timeout_seconds,
        )
        return JobsServicer(settings, store, datasets, params, relay, watcher, flags)

    async def _open_database(self, engine: AsyncEngine) -> JobStore:
        """Bring the schema up to date and open the store; a clear error when unreachable."""
        try:
            await migrate(engine, MIGRATIONS_DIR)
            return await JobStore.open(engine, self.settings.database_pool_size)
        except (OSError, SQLAlchemyError, asyncpg.PostgresError) as error:
            where = engine.url.render_as_string(hide_password=True)
            raise StartupError(
                f"cannot open the jobs database at {where}: {type(error).__name__}: {error} "
                "(set MODELYARD_JOBS_DATABASE_URL)"
            ) from error

    def _channel(self, stack: AsyncExitStack, address: str) -> grpc.aio.Channel:
        channel = open_channel(address, self.settings)
        stack.push_async_callback(channel.close)
        return channel
