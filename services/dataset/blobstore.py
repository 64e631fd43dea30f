"""Where dataset files live: the local filesystem (default) or S3.

The interface is small and synchronous: ingest and reads run in worker
threads, and the servicer wraps the few calls it makes itself in
`asyncio.to_thread`, so boto3's blocking calls never stall the event loop.

Writers are all-or-nothing: bytes become visible under their key only on
`commit()`; `abort()` leaves nothing behind (a local temporary file is
removed, an S3 multipart upload is aborted, segments written are deleted).

On S3 a blob written with `open_segmented_writer` is kept in segments:
numbered objects, each stored with one PUT as it fills, and an index under the
blob's own key, written on commit. Completing a multipart upload can cost the
S3 server every byte a second time (moto copies the parts into one object;
other servers may too), after the last byte, while the client waits; a
segment's bytes are stored once, while the upload is still arriving.
`open_reader` reads either kind. A presigned URL or a server-side copy needs
one whole object: the first one asked for joins the segments, on the server
(UploadPartCopy), into an object that replaces the index, then deletes them;
a reader that was reading the segments goes on from the whole object.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, Protocol, TypeVar, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, HeadObjectOutputTypeDef

logger = logging.getLogger("modelyard.dataset.blobs")

T = TypeVar("T")

DOWNLOAD_CHUNK_BYTES = 8 * 1024 * 1024


ORIGINAL_CODEC = "zstd"


def original_key(dataset_id: str, codec: str = "") -> str:
    """The uploaded file; `codec` "zstd" when it is kept compressed (see ingest.py)."""
    return f"datasets/{dataset_id}/original.csv" + (".zst" if codec else "")


# S3's limit on the parts of one multipart upload: a segmented blob joins from at most
# this many segments (50 GB at the smallest segment size).
MAX_MULTIPART_PARTS = 10_000

# The user metadata (x-amz-meta-*) that marks a segmented blob's index object.
SEGMENTS_METADATA = "modelyard-segments"


def segments_prefix(key: str) -> str:
    return f"{key}.segments/"


def segment_key(key: str, number: int) -> str:
    return f"{segments_prefix(key)}{number:05d}"


def parquet_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/data.parquet"


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/"


class BlobNotFoundError(Exception):
    """The key holds no blob."""


@dataclass(frozen=True)
class ReadAccess:
    url: str
    size_bytes: int
    # Seconds since the epoch when the URL stops working; None when it does not expire.
    expires_at: float | None


class BlobWriter(Protocol):
    def write(self, data: bytes) -> int: ...

    def tell(self) -> int: ...

    def finish(self) -> None:
        """No more writes: start storing what is still buffered, without waiting for it."""
        ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    def open_writer(self, key: str) -> BlobWriter:
        """A writer whose bytes appear under `key` on commit."""
        ...

    def open_segmented_writer(self, key: str) -> BlobWriter:
        """Like `open_writer`; the store may keep the blob in segments until a URL
        or a copy of it needs one whole object (see the module's docstring)."""
        ...

    def open_reader(self, key: str) -> BinaryIO:
        """The blob as a sequential stream."""
        ...

    def open_random_access(self, key: str) -> BinaryIO:
        """The blob as a seekable file, for formats read from the end (Parquet)."""
        ...

    def exists(self, key: str) -> bool: ...

    def read_access(self, key: str, seconds: int) -> ReadAccess:
        """A URL that reads the blob (and only it) for `seconds`, and the blob's size."""
        ...

    def copy(self, source: str, target: str) -> None:
        """Make `target` hold the same bytes as `source` (within the store)."""
        ...

    def delete(self, key: str) -> None:
        """Remove a blob; a missing blob is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob under `prefix`, and any unfinished write there."""
        ...

    def close(self) -> None: ...


# -- local filesystem -------------------------------------------------------------------


class LocalBlobWriter(io.RawIOBase):
    """Writes to a hidden temporary file beside the target, renamed into place on commit.

    A durable writer flushes the file to disk before the rename, so that the name
    never stands for half a file after a power loss. A copy that can be dropped
    after a restart (the read cache) skips that wait.
    """

    def __init__(self, target: Path, *, durable: bool = True) -> None:
        super().__init__()
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target
        self._durable = durable
        self._partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        self._file = self._partial.open("wb")
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = self._file.write(data)
        self._position += written
        return written

    def tell(self) -> int:
        return self._position

    def finish(self) -> None:
        self._file.flush()

    def commit(self) -> None:
        self._file.flush()
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self._target)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    def open_writer(self, key: str) -> BlobWriter:
        return LocalBlobWriter(self.path(key))

    def open_segmented_writer(self, key: str) -> BlobWriter:
        return self.open_writer(key)  # a local rename costs nothing: always one file

    def open_reader(self, key: str) -> BinaryIO:
        try:
            return self.path(key).open("rb")
        except FileNotFoundError as error:
            raise BlobNotFoundError(key) from error

    def open_random_access(self, key: str) -> BinaryIO:
        return self.open_reader(key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def read_access(self, key: str, seconds: int) -> ReadAccess:
        """A `file://` URL, for workers that share this filesystem (or a shared volume)."""
        path = self.path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError as error:
            raise BlobNotFoundError(key) from error
        return ReadAccess(url=path.as_uri(), size_bytes=size, expires_at=None)

    def copy(self, source: str, target: str) -> None:
        writer = LocalBlobWriter(self.path(target))
        try:
            with self.open_reader(source) as handle:
                shutil.copyfileobj(handle, writer, DOWNLOAD_CHUNK_BYTES)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def close(self) -> None:
        pass


# -- S3 ---------------------------------------------------------------------------------


class _S3PartsWriter(io.RawIOBase):
    """Cuts what is written into parts of `part_bytes` and sends each as it fills.

    Each part is filled in a buffer of its own, handed to `send` as it is (no
    joining copy) and dropped once stored: at most `max_parts_in_flight` + 1
    parts are in memory. Subclasses give `send` and say what commit and abort do.
    """

    def __init__(self, store: S3BlobStore, key: str, send: Callable[[bytearray], None]) -> None:
        super().__init__()
        self._send = send
        self._store = store
        self._client = store.client
        self._key = key
        self._part = bytearray()  # allocated at the first write (a blob may stay empty)
        self._filled = 0
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        written = 0
        while written < size:
            if not self._part:
                self._part = bytearray(self._store.part_bytes)
            room = len(self._part) - self._filled
            piece = min(room, size - written)
            self._part[self._filled : self._filled + piece] = view[written : written + piece]
            self._filled += piece
            written += piece
            if self._filled == len(self._part):
                self._send(self._take_part())
        self._position += size
        return size

    def _take_part(self) -> bytearray:
        """The part filled so far (trimmed to its bytes), handed over without a copy."""
        part, self._part = self._part, bytearray()
        del part[self._filled :]
        self._filled = 0
        return part

    def tell(self) -> int:
        return self._position


class S3MultipartWriter(_S3PartsWriter):
    """A multipart upload, its parts sent a few at a time; a small blob is one PUT on commit."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        super().__init__(store, key, send=self._send_part)
        self._upload_id: str | None = None
        self._sends: BoundedSends[CompletedPartTypeDef] = BoundedSends(store)

    def _send_part(self, data: bytearray) -> None:
        if self._upload_id is None:
            response = self._client.create_multipart_upload(
                Bucket=self._store.bucket, Key=self._key
            )
            self._upload_id = response["UploadId"]
        self._sends.submit(self._upload_part, self._sends.count + 1, data)

    def _upload_part(self, number: int, data: bytearray) -> CompletedPartTypeDef:
        assert self._upload_id is not None
        response = self._client.upload_part(
            Bucket=self._store.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=as_body(data),
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def finish(self) -> None:
        if self._upload_id is not None and (rest := self._take_part()):
            self._send_part(rest)  # a small blob stays one PUT, on commit

    def commit(self) -> None:
        rest = self._take_part()
        if self._upload_id is None:
            self._client.put_object(Bucket=self._store.bucket, Key=self._key, Body=as_body(rest))
            return
        if rest:
            self._send_part(rest)
        self._client.complete_multipart_upload(
            Bucket=self._store.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._sends.wait_all()},  # in part order
        )

    def abort(self) -> None:
        self._part, self._filled = bytearray(), 0
        self._sends.cancel()
        if self._upload_id is not None:
            self._client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
            )


class S3SegmentedWriter(_S3PartsWriter):
    """Each part a segment object of its own; the index, written on commit, makes it visible."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        super().__init__(store, key, send=self._send_part)
        self._sends: BoundedSends[int] = BoundedSends(store)  # each gives its segment's size

    def _send_part(self, data: bytearray) -> None:
        self._sends.submit(self._put_segment, self._sends.count, data)

    def _put_segment(self, number: int, data: bytearray) -> int:
        self._client.put_object(
            Bucket=self._store.bucket, Key=segment_key(self._key, number), Body=as_body(data)
        )
        return len(data)

    def finish(self) -> None:
        if rest := self._take_part():
            self._send_part(rest)

    def commit(self) -> None:
        self.finish()
        sizes = self._sends.wait_all()
        self._client.put_object(
            Bucket=self._store.bucket,
            Key=self._key,
            Body=json.dumps({"segment_bytes": sizes}).encode(),
            ContentType="application/json",
            Metadata={SEGMENTS_METADATA: str(len(sizes))},
        )

    def abort(self) -> None:
        self._part, self._filled = bytearray(), 0
        self._sends.cancel()
        self._store.delete_prefix(segments_prefix(self._key))


class BoundedSends(Generic[T]):
    """Sends run on the store's pool, at most `max_parts_in_flight` at once (a new
    one waits for the oldest); their results kept in the order they were sent."""

    def __init__(self, store: S3BlobStore) -> None:
        self._store = store
        self._in_flight: deque[Future[T]] = deque()
        self._results: list[T] = []

    @property
    def count(self) -> int:
        """Sends made so far."""
        return len(self._results) + len(self._in_flight)

    def submit(self, send: Callable[..., T], *args: Any) -> None:
        while len(self._in_flight) >= self._store.max_parts_in_flight:
            self._results.append(self._in_flight.popleft().result())
        self._in_flight.append(self._store.executor.submit(send, *args))

    def wait_all(self) -> list[T]:
        while self._in_flight:
            self._results.append(self._in_flight.popleft().result())
        return self._results

    def cancel(self) -> None:
        """Cancel the sends not started and wait for the others, whatever their outcome."""
        for future in self._in_flight:
            future.cancel()
        for future in self._in_flight:
            with contextlib.suppress(Exception):
                future.result()
        self._in_flight.clear()


class S3SegmentsReader(io.RawIOBase):
    """A segmented blob's segments, read one after the other as one stream.

    When a segment is gone, the segments were joined into one object since this
    reader opened the index: it reads on from that object, at the same offset.
    """

    def __init__(self, store: S3BlobStore, key: str, count: int) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._count = count
        self._next = 0
        self._offset = 0
        self._body: BinaryIO | None = None
        self._whole = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """`size` bytes (all that is left when negative), fewer only at the end."""
        wanted = -1 if size is None or size < 0 else size
        pieces: list[bytes] = []
        got = 0
        while wanted < 0 or got < wanted:
            body = self._body or self._open_next()
            if body is None:
                break
            piece = body.read(-1 if wanted < 0 else wanted - got)
            if not piece:
                body.close()
                self._body = None
                continue
            pieces.append(piece)
            got += len(piece)
            self._offset += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _open_next(self) -> BinaryIO | None:
        if self._whole or self._next >= self._count:
            return None
        try:
            self._body = self._store.open_reader(segment_key(self._key, self._next))
        except BlobNotFoundError:
            self._body = self._store.open_whole_from(self._key, self._offset)
            self._whole = True
        self._next += 1
        return self._body

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


def as_body(data: bytearray) -> bytes:
    """botocore sends a bytearray as it is (its stubs only say bytes): no copy."""
    return cast(bytes, data)


def _is_not_found(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str,
        part_bytes: int,
        max_parts_in_flight: int,
    ) -> None:
        self.bucket = bucket
        self.part_bytes = part_bytes
        self.max_parts_in_flight = max_parts_in_flight
        self.client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                max_pool_connections=max(10, 4 * max_parts_in_flight),
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
                # Integrity is checked end to end with the SHA-256 of the whole file;
                # per-request CRCs would only cost CPU on the ingest path.
                request_checksum_calculation="when_required",
                # SigV4 for presigned URLs too (GetParquetAccess): what S3 requires today.
                signature_version="s3v4",
                response_checksum_validation="when_required",
            ),
        )
        self._region = region
        self.executor = ThreadPoolExecutor(
            max_workers=4 * max_parts_in_flight, thread_name_prefix="s3-part"
        )
        # One join of a blob at a time in this process (a few locks, shared by hash).
        self._join_locks = [threading.Lock() for _ in range(16)]

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist yet."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if not _is_not_found(error):
                raise
            if self._region == "us-east-1":
                self.client.create_bucket(Bucket=self.bucket)
            else:
                self.client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self._region},  # type: ignore[typeddict-item]
                )
            logger.info("created bucket", extra={"bucket": self.bucket})

    def open_writer(self, key: str) -> BlobWriter:
        return S3MultipartWriter(self, key)

    def open_segmented_writer(self, key: str) -> BlobWriter:
        return S3SegmentedWriter(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_not_found(error):
                raise BlobNotFoundError(key) from error
            raise
        segments = response.get("Metadata", {}).get(SEGMENTS_METADATA)
        if segments is None:
            return response["Body"]  # type: ignore[return-value]
        response["Body"].close()  # the index: the count in its metadata is all a read needs
        return S3SegmentsReader(self, key, int(segments))  # type: ignore[return-value]

    def open_whole_from(self, key: str, offset: int) -> BinaryIO:
        """The whole (joined) blob from byte `offset` on."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-")
        except ClientError as error:
            if _is_not_found(error):
                raise BlobNotFoundError(key) from error
            if str(error.response.get("Error", {}).get("Code")) == "InvalidRange":
                return io.BytesIO()  # the offset is the end of the blob
            raise
        if SEGMENTS_METADATA in response.get("Metadata", {}):
            raise BlobNotFoundError(f"{key}: a segment is missing")
        return response["Body"]  # type: ignore[return-value]

    def _head_of_whole_blob(self, key: str) -> HeadObjectOutputTypeDef:
        """The blob's HEAD, its segments joined into one object first when it has any."""
        head = self._head(key)
        segments = head.get("Metadata", {}).get(SEGMENTS_METADATA)
        if segments is None:
            return head
        with self._join_locks[hash(key) % len(self._join_locks)]:
            head = self._head(key)  # another thread may have joined it meanwhile
            if SEGMENTS_METADATA in head.get("Metadata", {}):
                try:
                    self._join_segments(key, int(head["Metadata"][SEGMENTS_METADATA]))
                except ClientError:
                    # Another replica joined them first (and deleted them under this one)?
                    if SEGMENTS_METADATA in self._head(key).get("Metadata", {}):
                        raise
                head = self._head(key)
        return head

    def _head(self, key: str) -> HeadObjectOutputTypeDef:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_not_found(error):
                raise BlobNotFoundError(key) from error
            raise

    def _join_segments(self, key: str, count: int) -> None:
        """Replace the index under `key` with one object of its segments, copied by the
        server (no byte through here), then delete the segments."""
        started = time.perf_counter()
        if count > MAX_MULTIPART_PARTS:
            raise ValueError(
                f"{key!r} has {count} segments; one object can be joined from at most "
                f"{MAX_MULTIPART_PARTS} (raise s3_part_bytes)"
            )
        if count == 0:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
        else:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            try:
                parts = list(
                    self.executor.map(
                        lambda number: self._copy_part(key, upload_id, number), range(count)
                    )
                )
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                with contextlib.suppress(ClientError):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
                raise
        self.delete_prefix(segments_prefix(key))
        logger.info(
            "segments joined",
            extra={
                "key": key,
                "segments": count,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    def _copy_part(self, key: str, upload_id: str, number: int) -> CompletedPartTypeDef:
        response = self.client.upload_part_copy(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number + 1,
            CopySource={"Bucket": self.bucket, "Key": segment_key(key, number)},
        )
        return {"PartNumber": number + 1, "ETag": response["CopyPartResult"]["ETag"]}

    def open_random_access(self, key: str) -> BinaryIO:
        """A local, anonymous copy of the blob, fetched with one streamed GET.

        Parquet readers jump around a file; one GET is far cheaper than the
        many ranged GETs that would take (some S3 servers copy the whole object
        for every range), and the copy lives on disk, not in memory. It
        disappears when closed.
        """
        copy = tempfile.TemporaryFile()  # noqa: SIM115 - returned open, closed by the caller
        try:
            with contextlib.closing(self.open_reader(key)) as body:
                while chunk := body.read(DOWNLOAD_CHUNK_BYTES):
                    copy.write(chunk)
            copy.seek(0)
        except BaseException:
            copy.close()
            raise
        return copy

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_not_found(error):
                return False
            raise
        return True

    def read_access(self, key: str, seconds: int) -> ReadAccess:
        """A presigned GET URL: read-only, this one key, for `seconds`; no credential leaves."""
        head = self._head_of_whole_blob(key)
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
        )
        return ReadAccess(
            url=url, size_bytes=int(head["ContentLength"]), expires_at=time.time() + seconds
        )

    def copy(self, source: str, target: str) -> None:
        """A copy made by the S3 server itself (multipart above 5 GB): no bytes through here."""
        self._head_of_whole_blob(source)
        self.client.copy(
            {"Bucket": self.bucket, "Key": source},
            self.bucket,
            target,
            Config=TransferConfig(multipart_threshold=5 * 1024**3, multipart_chunksize=1024**3),
        )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)
        self.delete_prefix(segments_prefix(key))  # when it was kept in segments

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})  # type: ignore[typeddict-item]
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        for upload in uploads.get("Uploads", []):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
