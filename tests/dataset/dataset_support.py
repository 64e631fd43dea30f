"""Helpers of the Dataset service's tests: its client, upload requests, failures, S3
listings, and the service in-process or as a process. The fixtures that use them are in
conftest.py; test modules import these from here, never from conftest.py."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import boto3
import grpc
import pyarrow as pa

from devstack.components import S3Server
from devstack.processes import ManagedProcess, free_port
from devstack.stack import grpc_serving
from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime.channels import open_channel
from runtime.errors import error_reason, status_from_rpc_error
from runtime.settings import CommonSettings
from services.dataset.app import DatasetApp
from services.dataset.pipe import RecordingReader
from services.dataset.settings import DatasetSettings

TOKEN = "dataset-tests-token"


CHUNK = 256 * 1024


MiB = 1024 * 1024


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    reason: str | None
    message: str
    metadata: dict[str, str]


class DatasetClient:
    """DatasetService over gRPC, as the gateway, Jobs or the Trainer call it."""

    def __init__(self, address: str) -> None:
        settings = CommonSettings(MODELYARD_SERVICE_TOKEN=TOKEN)
        self.address = address
        self.channel = open_channel(address, settings)
        self.stub = dataset_service_pb2_grpc.DatasetServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def upload(
        self,
        data: bytes | Path,
        display_name: str = "test",
        chunk_bytes: int = CHUNK,
        **header: Any,
    ) -> dataset_pb2.Dataset:
        requests = upload_requests(data, display_name, chunk_bytes, **header)
        dataset: dataset_pb2.Dataset = await self.stub.UploadDataset(requests, timeout=300)
        return dataset

    async def upload_failure(self, data: bytes | Path, **kwargs: Any) -> Failure:
        return await failure_of(self.upload(data, **kwargs))

    async def get(self, dataset_id: str) -> dataset_pb2.Dataset:
        request = dataset_service_pb2.GetDatasetRequest(dataset_id=dataset_id)
        dataset: dataset_pb2.Dataset = await self.stub.GetDataset(request, timeout=30)
        return dataset

    async def read(
        self, dataset_id: str, columns: list[str] | None = None, batch_rows: int = 0
    ) -> tuple[pa.Table, int]:
        """The dataset as an Arrow table, and how many responses carried it."""
        request = dataset_service_pb2.ReadDatasetRequest(
            dataset_id=dataset_id, columns=columns or [], batch_rows=batch_rows
        )
        parts = [response.arrow_ipc async for response in self.stub.ReadDataset(request)]
        return pa.ipc.open_stream(b"".join(parts)).read_all(), len(parts)

    async def download(self, dataset_id: str, format: int = 0) -> tuple[bytes, set[str]]:
        body, content_types, _ = await self.download_chunks(dataset_id, format)
        return body, content_types

    async def download_chunks(
        self, dataset_id: str, format: int = 0
    ) -> tuple[bytes, set[str], list[int]]:
        """The downloaded bytes, their content types and the size of each message."""
        # An int, not the enum: tests also send numbers the enum does not have.
        request = dataset_service_pb2.DownloadDatasetRequest(
            dataset_id=dataset_id, format=cast(Any, format)
        )
        bodies = [body async for body in self.stub.DownloadDataset(request, timeout=120)]
        return (
            b"".join(body.data for body in bodies),
            {body.content_type for body in bodies},
            [len(body.data) for body in bodies],
        )

    async def delete(self, dataset_id: str) -> None:
        request = dataset_service_pb2.DeleteDatasetRequest(dataset_id=dataset_id)
        await self.stub.DeleteDataset(request, timeout=30)

    async def list(self, **fields: Any) -> dataset_service_pb2.ListDatasetsResponse:
        request = dataset_service_pb2.ListDatasetsRequest(**fields)
        response: dataset_service_pb2.ListDatasetsResponse = await self.stub.ListDatasets(
            request, timeout=30
        )
        return response


async def upload_requests(
    data: bytes | Path, display_name: str, chunk_bytes: int, **header: Any
) -> AsyncIterator[dataset_service_pb2.UploadDatasetRequest]:
    yield dataset_service_pb2.UploadDatasetRequest(
        header=dataset_service_pb2.UploadDatasetHeader(display_name=display_name, **header)
    )
    for chunk in chunks_of(data, chunk_bytes):
        yield dataset_service_pb2.UploadDatasetRequest(chunk=chunk)


def chunks_of(data: bytes | Path, chunk_bytes: int) -> Iterator[bytes]:
    if isinstance(data, Path):
        with data.open("rb") as handle:
            while chunk := handle.read(chunk_bytes):
                yield chunk
        return
    for offset in range(0, len(data), chunk_bytes):
        yield data[offset : offset + chunk_bytes]


def recording_reader(data: bytes, chunk_bytes: int, keep_bytes: int) -> RecordingReader:
    """`data` as the conversion reads an upload: in chunks of `chunk_bytes`."""
    chunks = chunks_of(data, chunk_bytes)
    return RecordingReader(lambda: next(chunks, b""), keep_bytes)


async def failure_of(call: Any) -> Failure:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        status = status_from_rpc_error(error)
        metadata: dict[str, str] = {}
        from google.rpc import error_details_pb2

        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                metadata = dict(info.metadata)
        return Failure(error.code(), error_reason(error), error.details() or "", metadata)
    raise AssertionError("the call succeeded; a failure was expected")


def sha256_of(data: bytes | Path) -> str:
    digest = hashlib.sha256()
    for chunk in chunks_of(data, MiB):
        digest.update(chunk)
    return digest.hexdigest()


def column(dataset: dataset_pb2.Dataset, name: str) -> dataset_pb2.Column:
    for item in dataset.columns:
        if item.name == name:
            return item
    raise AssertionError(f"no column {name!r} in {[item.name for item in dataset.columns]}")


def type_names(dataset: dataset_pb2.Dataset) -> dict[str, str]:
    return {item.name: dataset_pb2.Column.DataType.Name(item.data_type) for item in dataset.columns}


def s3_client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
    )


def s3_keys(server: S3Server, bucket: str, prefix: str) -> list[str]:
    """Objects and unfinished multipart uploads under `prefix`."""
    client = s3_client(server)
    objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return [item["Key"] for item in objects] + [f"(multipart) {item['Key']}" for item in uploads]


@dataclass
class RunningService:
    client: DatasetClient
    settings: DatasetSettings
    app: DatasetApp | None = None
    process: ManagedProcess | None = None
    s3: S3Server | None = None

    def blob_keys(self, dataset_id: str) -> list[str]:
        prefix = f"datasets/{dataset_id}/"
        if self.settings.blob_store == "s3":
            assert self.s3 is not None
            return s3_keys(self.s3, self.settings.s3_bucket, prefix)
        root = self.settings.resolved_blob_dir() / prefix
        return sorted(str(path) for path in root.rglob("*")) if root.exists() else []

    def blobs(self, dataset_id: str) -> list[str]:
        """The dataset's blobs by name (`original.csv`, ...), each once: on S3 a blob
        kept in segments is its index object, with the segments left out."""
        return sorted(
            key.rsplit("/", 1)[1]
            for key in self.blob_keys(dataset_id)
            if ".segments/" not in key and not key.startswith("(multipart)")
        )


ServiceFactory = Callable[..., Any]


async def start_in_process(tmp: Path, s3: S3Server | None, **overrides: Any) -> RunningService:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", s3.access_key_id if s3 else "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", s3.secret_access_key if s3 else "testing")
    fields: dict[str, Any] = {
        "MODELYARD_STATE_DIR": str(tmp / "state"),
        "MODELYARD_SERVICE_TOKEN": TOKEN,
        "MODELYARD_SHUTDOWN_GRACE_SECONDS": 2.0,
        "listen_address": f"127.0.0.1:{free_port()}",
        "blob_dir": tmp / "blobs",
    }
    if s3 is not None:
        fields |= {
            "blob_store": "s3",
            "s3_bucket": f"datasets-{os.urandom(4).hex()}",
            "s3_endpoint_url": s3.endpoint_url,
            "s3_region": s3.region,
            "s3_part_bytes": 5 * MiB,
        }
    settings = DatasetSettings(**(fields | overrides))
    app = DatasetApp(settings)
    await app.start()
    return RunningService(DatasetClient(settings.listen_address), settings, app=app, s3=s3)


async def stop_in_process(service: RunningService) -> None:
    await service.client.close()
    if service.app is not None:
        await service.app.close()


def start_process(
    tmp: Path, s3: S3Server, database_url: str, **env: str
) -> tuple[ManagedProcess, DatasetSettings]:
    address = env.pop("MODELYARD_DATASET_LISTEN_ADDRESS", f"127.0.0.1:{free_port()}")
    bucket = env.pop("MODELYARD_DATASET_S3_BUCKET", f"datasets-{os.urandom(4).hex()}")
    variables = {
        "MODELYARD_SERVICE_TOKEN": TOKEN,
        "MODELYARD_STATE_DIR": str(tmp / "state"),
        "MODELYARD_DATASET_LISTEN_ADDRESS": address,
        "MODELYARD_DATASET_DATABASE_URL": database_url,
        "MODELYARD_DATASET_BLOB_STORE": "s3",
        "MODELYARD_DATASET_S3_BUCKET": bucket,
        "MODELYARD_DATASET_S3_ENDPOINT_URL": s3.endpoint_url,
        "MODELYARD_DATASET_S3_REGION": s3.region,
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        "PYTHONUNBUFFERED": "1",
    } | env
    process = ManagedProcess(
        name="dataset",
        command=[sys.executable, "-m", "services.dataset"],
        env=variables,
        log_path=tmp / "logs" / f"dataset-{address.rsplit(':', 1)[1]}.log",
    ).start()
    process.wait_until(lambda: grpc_serving(address), timeout=120)
    settings = DatasetSettings(
        listen_address=address,
        blob_store="s3",
        s3_bucket=bucket,
        s3_endpoint_url=s3.endpoint_url,
        MODELYARD_SERVICE_TOKEN=TOKEN,
    )
    return process, settings
