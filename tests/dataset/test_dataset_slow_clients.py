"""Upload slots go to clients that send: idle and trickling clients are refused in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2
from tests.dataset.dataset_support import (
    RunningService,
    failure_of,
    start_in_process,
    stop_in_process,
)

State = dataset_pb2.Dataset.State
Request = dataset_service_pb2.UploadDatasetRequest
pytestmark = pytest.mark.slow
IDLE_SECONDS = 1.5


@pytest.fixture(scope="module")
async def paced(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningService]:
    tmp = tmp_path_factory.mktemp("dataset-pace")
    running = await start_in_process(
        tmp,
        None,
        database_url=f"sqlite:///{tmp / 'd.db'}",
        max_concurrent_uploads=2,
        upload_idle_seconds=IDLE_SECONDS,
        upload_min_bytes_per_second=64 * 1024,
    )
    yield running
    await stop_in_process(running)


def header(name: str) -> Request:
    return Request(header=dataset_service_pb2.UploadDatasetHeader(display_name=name))


async def idle_client() -> AsyncIterator[Request]:
    """Sends the header and the first line, then nothing (a stalled connection)."""
    yield header("idle")
    yield Request(chunk=b"a,b\n")
    await asyncio.sleep(60)


async def trickling_client() -> AsyncIterator[Request]:
    """Sends a row every 0.2 s: never idle, far below the minimum rate."""
    yield header("trickle")
    yield Request(chunk=b"a,b\n")
    for index in range(300):
        await asyncio.sleep(0.2)
        yield Request(chunk=b"%d,%d\n" % (index, index))


async def test_two_slow_clients_do_not_block_uploads(paced: RunningService) -> None:
    stub = paced.client.stub
    slow = [
        asyncio.ensure_future(failure_of(stub.UploadDataset(client(), timeout=60)))
        for client in (idle_client, trickling_client)
    ]
    await asyncio.sleep(0.3)  # both slow clients hold the two slots
    started = time.monotonic()
    dataset = await paced.client.upload(b"x,y\n" + b"1,2\n" * 10_000, display_name="prompt")
    waited = time.monotonic() - started

    assert dataset.state == State.READY
    assert waited < 4 * IDLE_SECONDS + 5  # not the 60 s the slow clients would take
    idle, trickle = await asyncio.gather(*slow)
    for failure in (idle, trickle):
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "UPLOAD_TOO_SLOW",
        )
        failed = await paced.client.get(failure.metadata["dataset_id"])
        assert failed.state == State.FAILED
        assert paced.blob_keys(failed.dataset_id) == []
    assert "sent nothing" in idle.message
    assert "bytes a second" in trickle.message


async def test_a_client_slowed_by_the_service_itself_is_not_refused(
    paced: RunningService,
) -> None:
    """A big upload sent as fast as the client can: the waits are the service's own."""
    rows = b"".join(b"%d,%d,text-%d\n" % (i, i * 7, i % 97) for i in range(400_000))
    dataset = await paced.client.upload(b"a,b,c\n" + rows, chunk_bytes=64 * 1024)
    assert dataset.state == State.READY
    assert dataset.row_count == 400_000
