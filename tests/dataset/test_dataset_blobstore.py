"""The blob store contract, on local files and on a real S3 API (moto's server)."""

from __future__ import annotations

import contextlib
import io
import os
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from devstack.components import S3Server
from services.dataset.blobstore import (
    BlobNotFoundError,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    segments_prefix,
)
from tests.dataset.dataset_support import MiB, s3_keys


@pytest.fixture(params=["local", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server
) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    with _s3_store(s3_server) as s3:
        yield s3


@contextlib.contextmanager
def _s3_store(s3_server: S3Server) -> Iterator[S3BlobStore]:
    s3 = S3BlobStore(
        f"blobs-{os.urandom(4).hex()}",
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
        part_bytes=5 * MiB,
        max_parts_in_flight=2,
    )
    s3.ensure_bucket()  # creates the bucket
    s3.ensure_bucket()  # and accepts that it exists
    try:
        yield s3
    finally:
        s3.close()


def test_written_blob_appears_only_on_commit(store: BlobStore) -> None:
    writer = store.open_writer("datasets/a/original.csv")
    writer.write(b"hello ")
    writer.write(b"world")
    assert writer.tell() == 11
    assert not store.exists("datasets/a/original.csv")
    writer.commit()
    assert store.exists("datasets/a/original.csv")
    with store.open_reader("datasets/a/original.csv") as reader:
        assert reader.read() == b"hello world"


def test_multipart_blob_round_trips(store: BlobStore) -> None:
    data = os.urandom(12 * MiB + 12345)  # three parts of 5 MiB on S3
    writer = store.open_writer("datasets/b/original.csv")
    for offset in range(0, len(data), MiB):
        writer.write(data[offset : offset + MiB])
    writer.commit()
    with store.open_reader("datasets/b/original.csv") as reader:
        assert reader.read() == data


@pytest.mark.parametrize("segmented", [False, True], ids=["whole", "segmented"])
def test_aborted_write_leaves_nothing(
    store: BlobStore, s3_server: S3Server, segmented: bool
) -> None:
    key = "datasets/c/original.csv"
    writer = store.open_segmented_writer(key) if segmented else store.open_writer(key)
    writer.write(os.urandom(11 * MiB))  # parts or segments already sent on S3
    writer.abort()
    assert not store.exists(key)
    assert _leftovers(store, s3_server, "datasets/c/") == []


def test_delete_prefix_removes_blobs_and_unfinished_writes(
    store: BlobStore, s3_server: S3Server
) -> None:
    for name in ("original.csv", "data.parquet"):
        writer = store.open_writer(f"datasets/d/{name}")
        writer.write(b"x")
        writer.commit()
    unfinished = store.open_writer("datasets/d/more.csv")
    unfinished.write(os.urandom(6 * MiB))  # as a crashed process leaves it
    store.delete_prefix("datasets/d/")
    assert _leftovers(store, s3_server, "datasets/d/") == []
    store.delete("datasets/d/original.csv")  # deleting what is gone is fine
    # The crashed process's handle: its end closes it, which the test does by hand (the
    # upload it would abort on S3 is gone already).
    with contextlib.suppress(ClientError):
        unfinished.abort()


def test_segmented_blob_appears_only_on_commit_and_reads_back_whole(
    store: BlobStore, s3_server: S3Server
) -> None:
    data = os.urandom(12 * MiB + 12345)  # three segments of 5 MiB on S3
    writer = store.open_segmented_writer("datasets/f/original.csv.zst")
    for offset in range(0, len(data), MiB):
        writer.write(data[offset : offset + MiB])
    assert not store.exists("datasets/f/original.csv.zst")
    writer.commit()
    if isinstance(store, S3BlobStore):
        stored = _leftovers(store, s3_server, "datasets/f/")
        segments = segments_prefix("datasets/f/original.csv.zst")
        assert stored == ["datasets/f/original.csv.zst"] + [f"{segments}{n:05d}" for n in range(3)]
    with store.open_reader("datasets/f/original.csv.zst") as reader:
        assert reader.read() == data
    # Reads that straddle segments get every byte asked for, in order.
    with store.open_reader("datasets/f/original.csv.zst") as reader:
        pieces: list[bytes] = []
        while piece := reader.read(3 * MiB + 7):
            pieces.append(piece)
        assert [len(piece) for piece in pieces[:-1]] == [3 * MiB + 7] * (len(pieces) - 1)
        assert b"".join(pieces) == data


@pytest.mark.parametrize("segmented", [False, True], ids=["whole", "segmented"])
def test_a_finished_blob_is_stored_before_its_commit_and_appears_only_then(
    store: BlobStore, s3_server: S3Server, segmented: bool
) -> None:
    """finish() starts storing the buffered rest (the Parquet copy's end goes out while
    its last rows are still being profiled); commit still decides whether it appears."""
    data = os.urandom(7 * MiB + 99)  # a part of 5 MiB and a rest on S3
    key = "datasets/h/parquet.parquet"
    open_writer = store.open_segmented_writer if segmented else store.open_writer
    writer = open_writer(key)
    writer.write(data)
    writer.finish()
    if isinstance(store, S3BlobStore) and segmented:
        last_segment = f"{segments_prefix(key)}00001"
        deadline = time.monotonic() + 10
        while last_segment not in _leftovers(store, s3_server, "datasets/h/"):
            assert time.monotonic() < deadline, "the rest was not sent on finish()"
            time.sleep(0.02)
    assert not store.exists(key)
    writer.commit()
    with store.open_reader(key) as reader:
        assert reader.read() == data


def test_empty_segmented_blob_reads_back_empty(store: BlobStore) -> None:
    writer = store.open_segmented_writer("datasets/g/original.csv.zst")
    writer.commit()
    with store.open_reader("datasets/g/original.csv.zst") as reader:
        assert reader.read() == b""


def test_deleting_a_segmented_blob_removes_its_segments(
    store: BlobStore, s3_server: S3Server
) -> None:
    writer = store.open_segmented_writer("datasets/i/original.csv.zst")
    writer.write(os.urandom(6 * MiB))
    writer.commit()
    store.delete("datasets/i/original.csv.zst")
    assert _leftovers(store, s3_server, "datasets/i/") == []


def test_a_url_or_copy_of_a_segmented_blob_gets_it_whole(
    store: BlobStore, s3_server: S3Server
) -> None:
    """The first URL joins the segments into one object; a reader that was reading
    them when they were deleted goes on with the right bytes."""
    data = os.urandom(11 * MiB + 321)
    writer = store.open_segmented_writer("datasets/j/data.parquet")
    writer.write(data)
    writer.commit()
    with store.open_reader("datasets/j/data.parquet") as early_reader:
        head = early_reader.read(6 * MiB)  # into the second segment

        access = store.read_access("datasets/j/data.parquet", 60)

        assert access.size_bytes == len(data)
        with urllib.request.urlopen(access.url) as response:
            assert response.read() == data
        stored = _leftovers(store, s3_server, "datasets/j/")
        assert [key.rsplit("blobs/", 1)[-1] for key in stored] == ["datasets/j/data.parquet"]
        assert head + early_reader.read() == data
    store.copy("datasets/j/data.parquet", "datasets/j/copy.parquet")
    with store.open_reader("datasets/j/copy.parquet") as reader:
        assert reader.read() == data
    # Joined already: a second URL is given at once.
    assert store.read_access("datasets/j/data.parquet", 60).size_bytes == len(data)


def test_two_replicas_asking_for_a_url_at_once_both_get_the_whole_blob(
    s3_server: S3Server,
) -> None:
    """Two Dataset service processes join the same segments at once: both give out
    the whole blob, and no segment is left behind."""
    data = os.urandom(16 * MiB + 1)
    with _s3_store(s3_server) as first:
        writer = first.open_segmented_writer("datasets/k/data.parquet")
        writer.write(data)
        writer.commit()
        second = S3BlobStore(
            first.bucket,
            endpoint_url=s3_server.endpoint_url,
            region=s3_server.region,
            part_bytes=5 * MiB,
            max_parts_in_flight=2,
        )
        try:
            with ThreadPoolExecutor(2) as pool:
                sizes = list(
                    pool.map(
                        lambda store: store.read_access("datasets/k/data.parquet", 60).size_bytes,
                        [first, second],
                    )
                )
        finally:
            second.close()
        assert sizes == [len(data), len(data)]
        assert _leftovers(first, s3_server, "datasets/k/") == ["datasets/k/data.parquet"]
        with first.open_reader("datasets/k/data.parquet") as reader:
            assert reader.read() == data


def test_random_access_reads_parquet(store: BlobStore) -> None:
    table = pa.table({"a": list(range(100_000)), "b": [str(index) for index in range(100_000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=10_000)
    writer = store.open_writer("datasets/e/data.parquet")
    writer.write(sink.getvalue())
    writer.commit()
    with store.open_random_access("datasets/e/data.parquet") as source:
        parquet = pq.ParquetFile(source)
        assert parquet.metadata.num_row_groups == 10
        assert parquet.read(columns=["b"]).column("b").to_pylist()[-1] == "99999"


def test_missing_blob(store: BlobStore) -> None:
    assert not store.exists("datasets/none/original.csv")
    with pytest.raises(BlobNotFoundError):
        store.open_reader("datasets/none/original.csv")
    with pytest.raises(BlobNotFoundError):
        store.open_random_access("datasets/none/data.parquet")


def test_local_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError, match="escapes"):
        store.open_writer("../outside.csv")


def _leftovers(store: BlobStore, s3_server: S3Server, prefix: str) -> list[str]:
    if isinstance(store, S3BlobStore):
        return s3_keys(s3_server, store.bucket, prefix)
    assert isinstance(store, LocalBlobStore)
    folder = store.root / prefix
    return (
        sorted(str(path) for path in folder.rglob("*") if path.is_file()) if folder.exists() else []
    )
