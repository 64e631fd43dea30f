"""The messages of an upload stream, read with a pace the client must keep.

An upload holds one of a few slots while its bytes arrive. A client that
sends nothing for `idle_seconds`, or on average less than `min_bytes_per_second`
once that long has passed, is refused (`UPLOAD_TOO_SLOW`): two trickling
clients must not hold every slot. Only the time spent waiting for the client
counts; time the service itself makes the client wait (a slow stage slowing
the stream down) does not.

A read is never cancelled half-way (that would close the stream): one read
runs at a time, and a read that timed out is taken up again by `drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from modelyard.dataset.v1 import dataset_service_pb2
from runtime.errors import ServiceError
from runtime.wire import field_tag
from services.dataset import reasons

# When the service answers early, it still reads (and drops) what the client sends,
# up to these bounds: grpc's asyncio client reports INTERNAL ("Internal error from
# Core") instead of the server's status when its next write fails because the
# server has already answered (grpc/grpc#36066).
DRAIN_MAX_BYTES = 256 * 1024 * 1024
DRAIN_MAX_SECONDS = 15.0


# The tag an UploadDatasetRequest holding a chunk starts with: the chunk field's number,
# wire type 2 (length-delimited). Taken from the descriptor so a renumbering cannot
# silently break the reader.
_CHUNK_TAG = field_tag(
    dataset_service_pb2.UploadDatasetRequest.DESCRIPTOR.fields_by_name["chunk"].number
)
_VARINT_MAX_BYTES = 10


@dataclass(frozen=True)
class ChunkMessage:
    """An `UploadDatasetRequest` that holds only a chunk, as `deserialize_upload_request`
    reads it: the same `chunk` and `WhichOneof("payload")` as the protobuf message."""

    chunk: bytes

    def WhichOneof(self, oneof_group: str) -> str:  # protobuf's name, hence the case
        return "chunk"


def deserialize_upload_request(
    raw: bytes,
) -> ChunkMessage | dataset_service_pb2.UploadDatasetRequest:
    """UploadDataset's request deserializer: a chunk taken out of gRPC's bytes with one copy.

    A message holding only a chunk is its tag, a varint length and the chunk's
    bytes. Parsed as a protobuf message, each MiB of the upload would be copied
    into the message and copied again when the field is read; here it is one
    slice of the bytes gRPC hands over. Anything else (the header, a message with
    other fields) is parsed by protobuf as usual.
    """
    if raw[: len(_CHUNK_TAG)] == _CHUNK_TAG:
        length, offset = 0, len(_CHUNK_TAG)
        for shift in range(0, 7 * _VARINT_MAX_BYTES, 7):
            if offset >= len(raw):
                break
            byte = raw[offset]
            offset += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if offset + length == len(raw):
                    return ChunkMessage(raw[offset:])
                break
    return dataset_service_pb2.UploadDatasetRequest.FromString(raw)


@dataclass(frozen=True)
class Pace:
    idle_seconds: float
    min_bytes_per_second: int


def too_slow(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, reasons.UPLOAD_TOO_SLOW, message)


class UploadMessages:
    """The request stream of one upload, read one message at a time."""

    def __init__(self, messages: AsyncIterator[Any]) -> None:
        self._messages = messages
        self._pending: asyncio.Future[Any] | None = None
        self._ended = False
        self.waited_seconds = 0.0
        self.received_bytes = 0

    async def next(self, wait_seconds: float | None = None) -> Any | None:
        """The next message, None at the end; TimeoutError after `wait_seconds`."""
        received = await self._next_received(wait_seconds)
        return None if received is None else received[0]

    async def _next_received(self, wait_seconds: float | None) -> tuple[Any, bytes] | None:
        """The next message and its chunk (b"" for other messages), None at the end.

        The chunk is taken out of the message once: every access to a bytes field
        of a protobuf message copies it (1 MiB per message of an upload).
        """
        if self._ended:
            return None
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._messages))
        started = time.monotonic()
        done, _ = await asyncio.wait({self._pending}, timeout=wait_seconds)
        self.waited_seconds += time.monotonic() - started
        if not done:
            raise TimeoutError
        future, self._pending = self._pending, None
        try:
            message = future.result()
        except StopAsyncIteration:
            self._ended = True
            return None
        chunk: bytes = getattr(message, "chunk", b"")
        self.received_bytes += len(chunk)
        return message, chunk

    async def paced(self, pace: Pace) -> AsyncIterator[tuple[Any, bytes]]:
        """The remaining messages with their chunks, refused when the client is too slow."""
        while True:
            try:
                received = await self._next_received(wait_seconds=pace.idle_seconds)
            except TimeoutError:
                raise too_slow(
                    f"the client sent nothing for {pace.idle_seconds:g} s while holding an "
                    "upload slot"
                ) from None
            if received is None:
                return
            waited = self.waited_seconds
            if (
                pace.min_bytes_per_second
                and waited > pace.idle_seconds
                and self.received_bytes < pace.min_bytes_per_second * waited
            ):
                raise too_slow(
                    f"the client sent {self.received_bytes} bytes in {waited:.0f} s, slower "
                    f"than the {pace.min_bytes_per_second} bytes a second an upload must keep"
                )
            yield received

    async def drain(self, pace: Pace, client_too_slow: bool) -> None:
        """Read what the client is still sending (bounded) before the call is answered:
        until it stops for `pace.idle_seconds`, and no longer than that at all for a
        client refused as too slow."""
        drained = 0
        limit = pace.idle_seconds if client_too_slow else DRAIN_MAX_SECONDS
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, grpc.RpcError):
            async with asyncio.timeout(limit):
                while (received := await self._next_received(pace.idle_seconds)) is not None:
                    drained += len(received[1])
                    if drained > DRAIN_MAX_BYTES:
                        break
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
