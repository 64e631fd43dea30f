"""The upload body's re-cutting into chunk messages (gateway.streaming.rechunk)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from gateway.streaming import rechunk
from modelyard.dataset.v1.dataset_service_pb2 import UploadDatasetRequest
from runtime.wire import field_head


async def _pieces(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def _rechunked(pieces: list[bytes], size: int, **options: Any) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [chunk async for chunk in rechunk(_pieces(pieces), size, **options)]

    return asyncio.run(collect())


def test_chunks_are_the_body_in_order_each_full_but_the_last() -> None:
    generator = random.Random(7)
    for _ in range(300):  # pieces shorter, as long as and longer than a chunk, and empty ones
        size = generator.randint(1, 25)
        pieces = [
            generator.randbytes(generator.randint(0, 40)) for _ in range(generator.randint(0, 30))
        ]

        chunks = _rechunked(pieces, size)

        assert b"".join(chunks) == b"".join(pieces)
        assert all(len(chunk) == size for chunk in chunks[:-1])
        assert all(0 < len(chunk) <= size for chunk in chunks)
        assert all(isinstance(chunk, bytes) for chunk in chunks)


def test_a_piece_straddling_chunks_is_split_between_them() -> None:
    assert _rechunked([b"ab", b"cdefg", b"h"], 3) == [b"abc", b"def", b"gh"]


def test_an_empty_body_gives_no_chunk() -> None:
    assert _rechunked([], 4) == []
    assert _rechunked([b"", b""], 4) == []


def test_chunks_encoded_as_messages_are_what_protobuf_reads() -> None:
    """The gateway sends each chunk as an encoded UploadDatasetRequest of its own."""
    body = random.Random(3).randbytes(70_000)  # a chunk needs a 3-byte length
    pieces = [body[:1000], body[1000:65_000], body[65_000:]]
    number = UploadDatasetRequest.DESCRIPTOR.fields_by_name["chunk"].number

    messages = _rechunked(pieces, 30_000, head=partial(field_head, number))

    chunks = [UploadDatasetRequest.FromString(message).chunk for message in messages]
    assert [len(chunk) for chunk in chunks] == [30_000, 30_000, 10_000]
    assert b"".join(chunks) == body
