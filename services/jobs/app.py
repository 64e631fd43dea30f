"""The Jobs service assembled: database, NATS, the gRPC server and the
background loops (outbox relay, events consumer, deadline watchdog)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.dataset.v1.dataset_service_pb2_grpc import DatasetServiceStub
from modelyard.jobs.v1 import jobs_service_pb2, jobs_service_pb2_grpc
from modelyard.training.v1.trainer_service_pb2_grpc import TrainerServiceStub
from runtime.channels import open_channel
from runtime.db import create_engine, migrate
from runtime.messaging import cancellations, connect, ensure_streams
from runtime.server import GrpcServer
from services.jobs import metrics
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
CANCEL_ROUNDS = 10
CANCEL_ROUND_SECONDS = 1.0


class StartupError(Exception):
    """The service cannot start; the message says what to fix."""


class JobsService:
    def __init__(self, settings: JobsSettings) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.nc: NatsClient | None = None
        self.store: JobStore | None = None
        self.relay: OutboxRelay | None = None
        self.watchdog: DeadlineWatchdog | None = None
        self._watcher: JobWatcher | None = None
        self._server: GrpcServer | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    async def start(self) -> None:
        settings = self.settings
        self.engine = create_engine(
            settings.resolved_database_url(), pool_size=settings.database_pool_size
        )
        self.store = await self._open_database(self.engine)

        self.nc = await self._connect_nats()
        self._watcher = JobWatcher(self.nc, self.store, settings.watch_refresh_seconds)
        self.store.add_change_listener(self._watcher.announce)
        js = self.nc.jetstream(timeout=settings.nats_publish_timeout_seconds)
        consumer = EventsConsumer(js, self.store, settings.events_ack_wait_seconds)
        try:
            await ensure_streams(js)
            flags = await cancellations(js)
            subscription = await consumer.subscribe()
        except nats.errors.Error as error:
            raise StartupError(
                f"NATS at {settings.nats_url} refused the JetStream set-up "
                f"({type(error).__name__}: {error}); is JetStream enabled (nats-server -js)?"
            ) from error

        self.relay = OutboxRelay(
            self.engine,
            Publisher(js, flags, settings.nats_publish_timeout_seconds),
            poll_seconds=settings.outbox_poll_seconds,
            batch_size=settings.outbox_batch_size,
            retention_seconds=settings.outbox_retention_seconds,
        )
        self.watchdog = DeadlineWatchdog(self.store, self.relay.wake, settings)
        if settings.fault_crash_after_commit:
            logger.warning("TEST ONLY fault point on: crash after the first create commits")
        else:  # with the relay running, a NOTIFY could publish before the crash lands
            self._start_task(self.relay.run(), "outbox-relay")
        self._start_task(consumer.run(subscription), "events-consumer")
        self._start_task(self.watchdog.run(), "deadline-watchdog")
        self._start_task(
            metrics.sample_forever(self.store, js, settings.metrics_sample_seconds), "metrics"
        )

        self._server = GrpcServer(settings, settings.listen_address, settings.metrics_address)
        jobs_service_pb2_grpc.add_JobsServiceServicer_to_server(
            self._servicer(self.store, self.relay, self._watcher, flags), self._server.server
        )
        self._server.enable(jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"])
        await self._server.start()

    def _servicer(
        self, store: JobStore, relay: OutboxRelay, watcher: JobWatcher, flags: KeyValue
    ) -> JobsServicer:
        settings = self.settings
        datasets = DatasetChecker(
            DatasetServiceStub(self._channel(settings.dataset_service_address)),
            settings.dependency_timeout_seconds,
            settings.dataset_cache_seconds,
        )
        params = ParamsChecker(
            TrainerServiceStub(self._channel(settings.trainer_service_address)),
            settings.dependency_timeout_seconds,
        )
        return JobsServicer(settings, store, datasets, params, relay, watcher, flags)

    async def stop(self) -> None:
        """Stop taking calls (in-flight ones finish), then the loops, then the connections."""
        if self._stopped:
            return
        self._stopped = True
        if self._watcher is not None:
            self._watcher.close()
        if self._server is not None:
            await self._server.stop()
        await _cancel_all(self._tasks)
        self._tasks.clear()
        for channel in self._channels:
            await channel.close()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.nc.close()
        if self.store is not None:
            await self.store.close()
        if self.engine is not None:
            await self.engine.dispose()

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

    async def _connect_nats(self) -> NatsClient:
        url = self.settings.nats_url
        timeout = self.settings.nats_connect_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                return await connect(url, f"jobs/{socket.gethostname()}-{os.getpid()}")
        except (TimeoutError, OSError) as error:
            raise StartupError(
                f"cannot reach NATS at {url} within {timeout:g}s "
                "(set MODELYARD_JOBS_NATS_URL to a NATS server with JetStream enabled)"
            ) from error

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = open_channel(address, self.settings)
        self._channels.append(channel)
        return channel

    def _start_task(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_report_death)
        self._tasks.append(task)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the loops and wait for them. A cancellation can be swallowed (nats-py
    waits with asyncio.wait_for, which on Python 3.11 may lose a cancel that races
    a timeout), so whatever is still running is cancelled again."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(CANCEL_ROUNDS):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_ROUND_SECONDS)
    if pending:
        logger.error(
            "background loops did not stop", extra={"loops": [t.get_name() for t in pending]}
        )


def _report_death(task: asyncio.Task[None]) -> None:
    """The loops never return on their own; if one does, say so loudly."""
    if task.cancelled():
        return
    error = task.exception()
    logger.critical(
        "background loop %s stopped", task.get_name(), exc_info=error if error else None
    )
