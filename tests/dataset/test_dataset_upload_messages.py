"""UploadDataset's request deserializer reads every message as protobuf does."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from modelyard.dataset.v1 import dataset_service_pb2
from services.dataset.upload_stream import ChunkMessage, deserialize_upload_request

Request = dataset_service_pb2.UploadDatasetRequest
Header = dataset_service_pb2.UploadDatasetHeader


@pytest.mark.parametrize(
    "message",
    [
        Request(chunk=b"a,b\n1,2\n"),
        Request(chunk=bytes(range(256)) * 4096),  # 1 MiB: a three-byte length
        Request(chunk=b""),
        Request(header=Header(display_name="sales", delimiter=";")),
        Request(),
    ],
    ids=["chunk", "chunk-1MiB", "empty-chunk", "header", "empty-message"],
)
def test_messages_read_as_protobuf_reads_them(message: Request) -> None:
    raw = message.SerializeToString()
    read = deserialize_upload_request(raw)
    assert read.WhichOneof("payload") == message.WhichOneof("payload")
    assert read.chunk == message.chunk
    if message.WhichOneof("payload") == "chunk":
        assert isinstance(read, ChunkMessage)
    else:
        assert read == message


def test_a_chunk_followed_by_other_fields_is_left_to_protobuf() -> None:
    """Two chunk fields in one message: protobuf keeps the last one."""
    raw = Request(chunk=b"first").SerializeToString() + Request(chunk=b"last").SerializeToString()
    read = deserialize_upload_request(raw)
    assert (read.WhichOneof("payload"), read.chunk) == ("chunk", b"last")


@pytest.mark.parametrize("raw", [b"\x12", b"\x12\x05abc", b"\x12\xff\xff"])
def test_truncated_messages_are_refused_as_protobuf_refuses_them(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        deserialize_upload_request(raw)
