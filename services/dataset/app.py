"""The Dataset service process: database, blob store, gRPC server and janitor, started and
stopped together (by `python -m services.dataset`, and in-process by the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from pathlib import Path

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.dataset.v1 import dataset_service_pb2, dataset_service_pb2_grpc
from runtime.db import create_engine, migrate, session_factory
from runtime.server import GrpcServer
from services.dataset.blobstore import BlobStore, LocalBlobStore, S3BlobStore, dataset_prefix
from services.dataset.cache import ParquetCache
from services.dataset.reading import serialize_read_response
from services.dataset.reasons import INGEST_INTERRUPTED
from services.dataset.repository import DatasetRepository
from services.dataset.servicer import DatasetServicer
from services.dataset.settings import DatasetSettings

logger = logging.getLogger("modelyard.dataset")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SERVICE_NAME = "modelyard.dataset.v1.DatasetService"


def create_blob_store(settings: DatasetSettings) -> BlobStore:
    if settings.blob_store == "s3":
        store = S3BlobStore(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            part_bytes=settings.s3_part_bytes,
            max_parts_in_flight=settings.s3_max_parts_in_flight,
        )
        store.ensure_bucket()
        return store
    return LocalBlobStore(settings.resolved_blob_dir())


class DatasetApp:
    def __init__(self, settings: DatasetSettings) -> None:
        self.settings = settings
        self._engine: AsyncEngine | None = None
        self._store: BlobStore | None = None
        self._server: GrpcServer | None = None
        self._janitor: asyncio.Task[None] | None = None
        self.servicer: DatasetServicer | None = None

    async def start(self) -> None:
        settings = self.settings
        self._engine = create_engine(settings.resolved_database_url())
        await migrate(self._engine, MIGRATIONS_DIR)
        self._store = await asyncio.to_thread(create_blob_store, settings)
        repository = DatasetRepository(
            session_factory(self._engine), timedelta(seconds=settings.upload_lease_seconds)
        )
        cache = None
        if settings.blob_store == "s3" and settings.read_cache_bytes > 0:
            cache = ParquetCache(settings.read_cache_dir(), settings.read_cache_bytes)
        self.servicer = DatasetServicer(settings, repository, self._store, cache)
        self._server = GrpcServer(settings, settings.listen_address, settings.metrics_address)
        dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(
            self.servicer, self._server.server
        )
        # ReadDataset yields responses already serialized (one copy less per batch).
        self._server.server.add_registered_method_handlers(
            SERVICE_NAME,
            {
                "ReadDataset": grpc.unary_stream_rpc_method_handler(
                    self.servicer.ReadDataset,
                    request_deserializer=dataset_service_pb2.ReadDatasetRequest.FromString,
                    response_serializer=serialize_read_response,
                )
            },
        )
        self._server.enable(dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"])
        await self._server.start()
        self._janitor = asyncio.create_task(self._sweep_forever(repository, self._store))

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        if self.servicer is not None:
            await self.servicer.drain()
        if self._store is not None:
            self._store.close()
        if self._engine is not None:
            await self._engine.dispose()

    async def _sweep_forever(self, repository: DatasetRepository, store: BlobStore) -> None:
        """Renew the leases of this process's uploads; fail uploads whose process died."""
        assert self.servicer is not None
        while True:
            try:
                await repository.renew_leases(sorted(self.servicer.active_uploads))
                await sweep_expired_uploads(repository, store)
            except Exception:
                logger.exception("janitor round failed; retrying at the next one")
            await asyncio.sleep(self.settings.janitor_interval_seconds)


async def sweep_expired_uploads(repository: DatasetRepository, store: BlobStore) -> int:
    swept = 0
    for dataset_id in await repository.expired_uploads():
        await asyncio.to_thread(store.delete_prefix, dataset_prefix(dataset_id))
        if await repository.mark_failed(
            dataset_id,
            14,  # UNAVAILABLE: the process doing the ingest went away
            INGEST_INTERRUPTED,
            "the process ingesting this upload stopped before finishing; upload again",
        ):
            swept += 1
            logger.warning("failed an interrupted upload", extra={"dataset_id": dataset_id})
    return swept
