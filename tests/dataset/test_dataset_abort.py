"""Uploads cut off midway leave no READY dataset and no files behind.

The client cancels; the client process is killed (its connection drops); the
service itself is killed with SIGKILL and a new process sweeps up after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from devstack.components import S3Server
from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2
from tests.dataset.dataset_support import TOKEN, DatasetClient, RunningService, start_process

State = dataset_pb2.Dataset.State
REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.fault]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def uploading_dataset(client: DatasetClient, name: str) -> dataset_pb2.Dataset:
    """The dataset of an upload in progress, once the service has recorded it."""
    found: list[dataset_pb2.Dataset] = []

    async def recorded() -> bool:
        page = await client.list(display_name_contains=name)
        found[:] = list(page.datasets)
        return bool(found)

    await eventually(recorded)
    return found[0]


async def endless_upload(
    name: str, sent: asyncio.Event
) -> AsyncIterator[dataset_service_pb2.UploadDatasetRequest]:
    yield dataset_service_pb2.UploadDatasetRequest(
        header=dataset_service_pb2.UploadDatasetHeader(display_name=name)
    )
    yield dataset_service_pb2.UploadDatasetRequest(chunk=b"a,b,c\n")
    # Random text: the service keeps text zstd-compressed, and this halves at most.
    rows = b"".join(
        b"%d,%s,x\n" % (index, os.urandom(24).hex().encode()) for index in range(20_000)
    )
    total = 0
    while True:
        yield dataset_service_pb2.UploadDatasetRequest(chunk=rows)
        total += len(rows)
        if total > 30 * 1024 * 1024:  # more than two S3 parts stored: a multipart upload is open
            sent.set()
        await asyncio.sleep(0.01)


async def assert_failed_without_files(
    service: RunningService, dataset_id: str, reason: str
) -> None:
    async def failed() -> bool:
        dataset = await service.client.get(dataset_id)
        return dataset.state == State.FAILED

    await eventually(failed)
    dataset = await service.client.get(dataset_id)
    from runtime.errors import status_reason

    assert status_reason(dataset.error) == reason
    await eventually(lambda: asyncio.to_thread(lambda: service.blob_keys(dataset_id) == []))


async def test_client_cancel_mid_upload(service: RunningService) -> None:
    name = f"cancelled-{id(service)}"
    sent = asyncio.Event()
    call = service.client.stub.UploadDataset(endless_upload(name, sent))
    await asyncio.wait_for(sent.wait(), timeout=60)
    dataset = await uploading_dataset(service.client, name)
    assert dataset.state == State.UPLOADING

    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
    await assert_failed_without_files(service, dataset.dataset_id, "UPLOAD_ABORTED")


CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from modelyard.dataset.v1 import dataset_service_pb2 as messages
    from modelyard.dataset.v1 import dataset_service_pb2_grpc as rpc

    async def requests():
        yield messages.UploadDatasetRequest(
            header=messages.UploadDatasetHeader(display_name=sys.argv[2]))
        yield messages.UploadDatasetRequest(chunk=b"a,b\\n")
        while True:
            yield messages.UploadDatasetRequest(chunk=b"1,2\\n" * 100_000)
            await asyncio.sleep(0.01)

    async def main():
        async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
            stub = rpc.DatasetServiceStub(channel)
            token = [("authorization", "Bearer " + sys.argv[3])]
            await stub.UploadDataset(requests(), metadata=token)

    asyncio.run(main())
    """
)


async def test_client_connection_dropped_mid_upload(service: RunningService) -> None:
    name = f"dropped-{id(service)}"
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, service.settings.listen_address, name, TOKEN, cwd=REPO_ROOT
    )
    try:
        dataset = await uploading_dataset(service.client, name)
        await asyncio.sleep(1.0)  # some megabytes in
    finally:
        client.send_signal(signal.SIGKILL)
        await client.wait()

    await assert_failed_without_files(service, dataset.dataset_id, "UPLOAD_ABORTED")


async def test_service_killed_mid_upload_is_swept_by_the_next_process(
    tmp_path: Path, s3_server: S3Server, database_url_factory: Callable[[str], str]
) -> None:
    url = await asyncio.to_thread(database_url_factory, "modelyard_dataset_kill")
    env = {
        "MODELYARD_DATASET_UPLOAD_LEASE_SECONDS": "2",
        "MODELYARD_DATASET_JANITOR_INTERVAL_SECONDS": "0.5",
        "MODELYARD_DATASET_S3_PART_BYTES": str(5 * 1024 * 1024),
    }
    first, settings = await asyncio.to_thread(start_process, tmp_path, s3_server, url, **env)
    client = DatasetClient(settings.listen_address)
    service = RunningService(client, settings, process=first, s3=s3_server)
    name = "killed-with-the-service"
    try:
        sent = asyncio.Event()
        call = client.stub.UploadDataset(endless_upload(name, sent))
        await asyncio.wait_for(sent.wait(), timeout=60)
        dataset = await uploading_dataset(client, name)
        # Stored while the upload arrives: segments of the original and of the Parquet copy.
        assert any(".segments/" in key for key in service.blob_keys(dataset.dataset_id))

        first.kill()
        with pytest.raises(grpc.aio.AioRpcError):
            await call
    finally:
        await client.close()
        await asyncio.to_thread(first.stop)

    env |= {
        "MODELYARD_DATASET_S3_BUCKET": settings.s3_bucket,
        "MODELYARD_DATASET_LISTEN_ADDRESS": settings.listen_address,
    }
    second, _ = await asyncio.to_thread(start_process, tmp_path, s3_server, url, **env)
    client = DatasetClient(settings.listen_address)
    service = RunningService(client, settings, process=second, s3=s3_server)
    try:
        await assert_failed_without_files(service, dataset.dataset_id, "INGEST_INTERRUPTED")
        assert (await client.upload(b"a\n1\n")).state == State.READY  # and it serves
    finally:
        await client.close()
        await asyncio.to_thread(second.stop)


async def test_shutdown_mid_upload_fails_the_upload_cleanly(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """SIGTERM's path: the server stops, the upload in flight is cancelled and cleaned up."""
    from tests.dataset.dataset_support import start_in_process, stop_in_process

    running = await start_in_process(
        tmp_path, s3_server, database_url=f"sqlite:///{tmp_path / 'd.db'}"
    )
    name = "stopped-with-the-server"
    sent = asyncio.Event()
    call = running.client.stub.UploadDataset(endless_upload(name, sent))
    await asyncio.wait_for(sent.wait(), timeout=60)
    dataset = await uploading_dataset(running.client, name)

    await stop_in_process(running)  # grace period 2 s, then in-flight calls are cancelled

    with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
        await call
    restarted = await start_in_process(
        tmp_path,
        s3_server,
        database_url=f"sqlite:///{tmp_path / 'd.db'}",
        s3_bucket=running.settings.s3_bucket,
    )
    try:
        await assert_failed_without_files(restarted, dataset.dataset_id, "UPLOAD_ABORTED")
    finally:
        await stop_in_process(restarted)
