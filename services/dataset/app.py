"""The Dataset service process: database, blob store, gRPC server and janitor, started and
stopped together (by `python -m services.dataset`, and in-process by the tests)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import grpc

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime.access_client import ApiTokenChecker
from runtime.app import App
from runtime.db import create_engine, database_reachable, migrate, session_factory
from runtime.server import GrpcServer
from runtime.wire import serialized
from services.dataset.blobstore import BlobStore, LocalBlobStore, S3BlobStore, dataset_prefix
from services.dataset.cache import ParquetCache
from services.dataset.reasons import INGEST_INTERRUPTED
from services.dataset.repository import DatasetRepository
from services.dataset.servicer import DatasetServicer
from services.dataset.settings import DatasetSettings
from services.dataset.upload_stream import deserialize_upload_request

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


def receive_window_options(window_bytes: int) -> list[tuple[str, int]]:
    """A fixed HTTP/2 receive window per stream.

    gRPC grows the window of a busy stream by itself (BDP probing), and a client
    uploading faster than ingest converts then parks tens of MiB in gRPC's buffers
    (measured: ~60 MiB of a 477 MB upload's peak). A fixed window bounds what one
    upload has buffered in gRPC to `window_bytes`.
    """
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window_bytes)]


class DatasetApp(App):
    """Database, blob store, gRPC server and janitor, opened in order and closed in
    reverse (`runtime.app.App`)."""

    def __init__(self, settings: DatasetSettings) -> None:
        super().__init__()
        self.settings = settings
        self.servicer: DatasetServicer | None = None

    async def _open(self, stack: AsyncExitStack) -> None:
        settings = self.settings
        engine = create_engine(settings.resolved_database_url())
        stack.push_async_callback(engine.dispose)
        await migrate(engine, MIGRATIONS_DIR)
        store = await asyncio.to_thread(create_blob_store, settings)
        stack.callback(store.close)
        repository = DatasetRepository(
            session_factory(engine), timedelta(seconds=settings.upload_lease_seconds)
        )
        cache = None
        if settings.blob_store == "s3" and settings.read_cache_bytes > 0:
            cache = ParquetCache(settings.read_cache_dir(), settings.read_cache_bytes)
        servicer = self.servicer = DatasetServicer(settings, repository, store, cache)
        stack.push_async_callback(servicer.drain)
        self._background(self._sweep_forever(repository, store), "janitor")
        # Project API tokens presented here are checked with the Jobs service.
        tokens = ApiTokenChecker(
            settings.jobs_service_address, settings, settings.api_token_cache_seconds
        )
        stack.push_async_callback(tokens.close)
        server = GrpcServer(
            settings,
            settings.listen_address,
            settings.metrics_address,
            options=receive_window_options(settings.upload_window_bytes),
            resolve_api_token=tokens.caller_of,
        )
        self._add_servicer(server, servicer)
        await server.start()
        stack.push_async_callback(server.stop)

        async def database_up() -> bool:
            return await database_reachable(engine)

        # Not ready (gateway /readyz, readiness probes) while its database is down.
        self._background(server.follow_dependencies([database_up]), "readiness")

    @staticmethod
    def _add_servicer(server: GrpcServer, servicer: DatasetServicer) -> None:
        dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server.server)
        # ReadDataset yields responses already serialized (one copy less per batch);
        # UploadDataset's chunks are taken out of gRPC's bytes without protobuf's copies.
        server.server.add_registered_method_handlers(
            SERVICE_NAME,
            {
                "UploadDataset": grpc.stream_unary_rpc_method_handler(
                    servicer.UploadDataset,
                    request_deserializer=deserialize_upload_request,
                    response_serializer=dataset_pb2.Dataset.SerializeToString,
                ),
                "ReadDataset": grpc.unary_stream_rpc_method_handler(
                    servicer.ReadDataset,
                    request_deserializer=dataset_service_pb2.ReadDatasetRequest.FromString,
                    response_serializer=serialized,
                ),
            },
        )
        server.enable(dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"])

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
