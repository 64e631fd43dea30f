"""The streaming routes through a real gateway: uploads streamed in chunks with flat
memory, downloads and Arrow reads streamed back, watches as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import pytest

from tests.gateway.gateway_doubles import (
    ARROW_PIECES,
    DOWNLOAD_CHUNKS,
    GatewayProcess,
    Recorder,
)

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


async def csv_body(total: int, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    line = b"1.5,2.25,abc,yes\n"
    block = (line * (piece // len(line) + 1))[:piece]
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        yield block[:size]
        sent += size
        await asyncio.sleep(0)


async def test_large_upload_is_streamed_in_chunks_with_flat_memory(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    total = 50 * MIB
    process = psutil.Process(gateway.process.pid)
    baseline = process.memory_info().rss
    peak = baseline
    finished_sending: list[float] = []

    async def body() -> AsyncIterator[bytes]:
        async for piece in csv_body(total):
            yield piece
        finished_sending.append(time.monotonic())

    async def sample_memory() -> None:
        nonlocal peak
        while True:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample_memory())
    try:
        async with gateway.client(timeout=120) as client:
            response = await client.post(
                "/v1/datasets",
                params={"displayName": "big", "delimiter": ";", "hasHeader": "false"},
                content=body(),
                headers={"content-type": "text/csv"},
            )
    finally:
        sampler.cancel()
    assert response.status_code == 200, response.text
    expected = hashlib.sha256()
    async for piece in csv_body(total):
        expected.update(piece)
    dataset = response.json()
    assert dataset["sizeBytes"] == str(total)
    assert dataset["sha256"] == expected.hexdigest()
    upload = recorder.uploads[-1]
    assert upload.header is not None
    assert upload.header.display_name == "big"
    assert upload.header.delimiter == ";"
    assert upload.header.HasField("has_header")
    assert not upload.header.has_header
    # ~1 MiB chunk messages, and the first one reached the service long before the
    # client had sent the whole body: the gateway never held it.
    assert upload.total_bytes == total
    assert max(upload.chunk_sizes) == MIB
    assert len(upload.chunk_sizes) == 50
    assert upload.first_chunk_at is not None
    assert upload.first_chunk_at < finished_sending[0]
    assert peak - baseline < 25 * MIB, f"gateway grew by {(peak - baseline) / MIB:.0f} MiB"


async def test_upload_takes_snake_case_query_and_octet_stream(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/datasets",
            params={"display_name": "small", "request_id": "r-1"},
            content=b"a,b\n1,2\n",
            headers={"content-type": "application/octet-stream"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["requestId"] == "r-1"
    upload = recorder.uploads[-1]
    assert upload.header is not None
    assert upload.header.display_name == "small"
    assert not upload.header.HasField("has_header")
    assert upload.chunk_sizes == [8]


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data"])
async def test_upload_refuses_other_media_types(
    gateway: GatewayProcess, recorder: Recorder, content_type: str
) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/datasets",
            params={"displayName": "x"},
            content=b"a,b\n",
            headers={"content-type": content_type},
        )
    assert response.status_code == 415
    assert response.json()["error"]["details"][0]["reason"] == "UNSUPPORTED_MEDIA_TYPE"
    assert recorder.uploads == []


async def test_upload_bad_query_is_400_before_any_call(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/datasets",
            params={"displayName": "x", "colour": "red"},
            content=b"a\n",
            headers={"content-type": "text/csv"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["reason"] == "QUERY_PARAMETER_INVALID"
    assert recorder.uploads == []


async def test_upload_refused_midway_by_the_service_answers_its_error(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"LIMIT" + b"x" * (MIB - 5)
        async for piece in csv_body(20 * MIB):
            yield piece

    async with gateway.client() as client:
        response = await client.post(
            "/v1/datasets",
            params={"displayName": "too-big"},
            content=body(),
            headers={"content-type": "text/csv"},
        )
        header_error = await client.post(
            "/v1/datasets",
            params={"displayName": "error-INVALID_ARGUMENT"},
            content=b"a\n",
            headers={"content-type": "text/csv"},
        )
    assert response.status_code == 429, response.text
    assert response.json()["error"]["details"][0]["reason"] == "UPLOAD_TOO_LARGE"
    assert header_error.status_code == 400
    assert header_error.json()["error"]["details"][0]["reason"] == "FAKE_INVALID_ARGUMENT"


async def test_client_leaving_midway_cancels_the_upload_call(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    class ClientGone(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        async for piece in csv_body(3 * MIB):
            yield piece
        await asyncio.sleep(0.3)
        raise ClientGone

    async with gateway.client() as client:
        with contextlib.suppress(ClientGone, httpx.HTTPError):
            await client.post(
                "/v1/datasets",
                params={"displayName": "abandoned"},
                content=body(),
                headers={"content-type": "text/csv"},
            )
    upload = recorder.uploads[-1]
    await asyncio.wait_for(upload.cancelled.wait(), timeout=10)
    assert not upload.finished
    assert upload.total_bytes >= 2 * MIB


async def test_download_streams_the_csv_as_an_attachment(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with (
        gateway.client() as client,
        client.stream("GET", "/v1/datasets/ds-1:download") as response,
    ):
        pieces = [piece async for piece in response.aiter_raw()]
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv"
    assert response.headers["content-disposition"] == 'attachment; filename="ds-1.csv"'
    assert "content-length" not in response.headers  # streamed, not buffered
    assert b"".join(pieces) == b"".join(DOWNLOAD_CHUNKS)
    assert recorder.requests["DownloadDataset"].dataset_id == "ds-1"


async def test_download_error_before_the_first_bytes_is_a_json_error(
    gateway: GatewayProcess,
) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/datasets/error-NOT_FOUND:download")
    assert response.status_code == 404
    assert response.json()["error"]["details"][0]["reason"] == "FAKE_NOT_FOUND"


async def test_download_failing_midway_is_cut_short_not_completed(
    gateway: GatewayProcess,
) -> None:
    received = bytearray()
    statuses: list[int] = []

    async def download() -> None:
        async with (
            gateway.client() as client,
            client.stream("GET", "/v1/datasets/breaks:download") as response,
        ):
            statuses.append(response.status_code)
            async for piece in response.aiter_raw():
                received.extend(piece)

    with pytest.raises(httpx.RemoteProtocolError):
        await download()
    assert statuses == [200]
    assert bytes(received) == DOWNLOAD_CHUNKS[0]


async def test_read_streams_arrow_bytes(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/datasets/ds-1:read", params={"columns": "a"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert response.content == b"".join(ARROW_PIECES)


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events as dicts of their fields; comments under the key ':'."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            event[name or ":"] = value.removeprefix(" ")
        events.append(event)
    return events


async def test_watch_is_server_sent_events_until_the_stream_ends(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/trainingJobs/job-5:watch")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = parse_sse(response.text)
    assert [event["event"] for event in events] == ["job", "job", "job"]
    assert [event["id"] for event in events] == ["1", "2", "3"]
    jobs = [json.loads(event["data"])["trainingJob"] for event in events]
    assert [job["state"] for job in jobs] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert jobs[0]["jobId"] == "job-5"


async def test_watch_sends_keepalives_while_idle(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/trainingJobs/idle:watch")
    events = parse_sse(response.text)
    kinds = [event.get("event", "comment") for event in events]
    assert kinds.count("job") == 3
    assert kinds.count("comment") >= 4  # keep-alive every 0.5 s, 1.3 s pauses
    assert all(event[":"] == "keep-alive" for event in events if "event" not in event)


async def test_watch_error_before_first_event_is_json_and_after_is_an_error_event(
    gateway: GatewayProcess,
) -> None:
    async with gateway.client() as client:
        missing = await client.get("/v1/trainingJobs/error-NOT_FOUND:watch")
        broken = await client.get("/v1/trainingJobs/breaks:watch")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["error"]["details"][0]["reason"] == "FAKE_NOT_FOUND"
    assert broken.status_code == 200
    events = parse_sse(broken.text)
    assert [event["event"] for event in events] == ["job", "job", "error"]
    error = json.loads(events[-1]["data"])["error"]
    assert error["code"] == 500
    assert error["details"][0]["reason"] == "TRAINER_LOST"


async def test_client_leaving_a_watch_cancels_the_backend_stream(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with (
        gateway.client() as client,
        client.stream("GET", "/v1/trainingJobs/forever:watch") as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break
    await asyncio.wait_for(recorder.watch_cancelled.wait(), timeout=10)
