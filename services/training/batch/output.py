"""Storing a scoring job's Parquet file as a new dataset (DatasetService.UploadDataset).

The file is streamed from disk in chunks, never held whole. The upload carries a
request id derived from the job, so an attempt that uploaded and then died is
followed by one whose upload returns the same dataset instead of a second copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime import access
from runtime.errors import error_reason
from services.training import reasons
from services.training.fit.dataset_reader import DatasetUnavailable
from services.training.model.targets import TrainingFailure

UPLOAD_CHUNK_BYTES = 1024 * 1024
MAX_DISPLAY_NAME_CHARS = 200  # DatasetService's limit on display names
_TRANSIENT_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
)


class DatasetWriter:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)

    async def upload(
        self, path: Path, display_name: str, request_id: str, deadline_seconds: float
    ) -> dataset_pb2.Dataset:
        """The READY dataset holding the file; TrainingFailure when DatasetService refuses
        it, DatasetUnavailable when it could not be reached (the job may be tried again)."""
        header = dataset_service_pb2.UploadDatasetHeader(
            display_name=display_name[:MAX_DISPLAY_NAME_CHARS], request_id=request_id
        )
        try:
            dataset: dataset_pb2.Dataset = await self._stub.UploadDataset(
                _messages(header, path),
                timeout=deadline_seconds,
                metadata=access.outgoing_metadata(),  # into the job's project
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _TRANSIENT_CODES:
                raise DatasetUnavailable(
                    f"DatasetService: {error.code().name}: {error.details()}"
                ) from error
            raise TrainingFailure(
                error_reason(error) or reasons.SCORING_OUTPUT_REFUSED,
                f"DatasetService refused the output: {error.code().name}: {error.details()}",
            ) from error
        return dataset


async def _messages(
    header: dataset_service_pb2.UploadDatasetHeader, path: Path
) -> AsyncIterator[dataset_service_pb2.UploadDatasetRequest]:
    yield dataset_service_pb2.UploadDatasetRequest(header=header)
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, UPLOAD_CHUNK_BYTES):
            yield dataset_service_pb2.UploadDatasetRequest(chunk=chunk)
