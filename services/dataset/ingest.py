"""One upload, from the first byte to a typed Parquet copy, in bounded memory.

    event loop ──chunks──▶ writer thread ──▶ original CSV blob (S3 multipart as it fills)
                               │  sha256, size, NUL / UTF-8 checks
                               └──feed──▶ conversion thread ──▶ Parquet blob + profile

The conversion's first pass runs while the upload is still arriving, so a
file that converts in one pass is READY soon after its last byte. Both hand-
offs are bounded pipes: a slow stage slows the client down instead of
buffering. When the first pass cannot stand (a type changes late in the file,
or the text turns out not to be UTF-8), the conversion is redone from the
stored original once the upload is complete.

Nothing is left behind on failure or cancellation: `discard()` stops both
threads and removes everything under the dataset's blob prefix (a multipart
upload in flight is aborted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

from runtime.errors import resource_exhausted
from services.dataset import reasons
from services.dataset.blobstore import (
    BlobStore,
    BlobWriter,
    dataset_prefix,
    original_key,
    parquet_key,
)
from services.dataset.cache import ParquetCache
from services.dataset.content import SNIFF_BYTES, UTF8, ContentInspector, check_signature
from services.dataset.convert import (
    Conversion,
    CsvFormat,
    IngestCancelledError,
    Limits,
    NotUtf8Error,
    ProfileOptions,
    TypeConflictError,
    convert,
    convert_file,
    convert_with_inferred_types,
)
from services.dataset.pipe import (
    Pipe,
    PipeAbortedError,
    RecordingReader,
    pipe_reader,
    stream_reader,
)
from services.dataset.threads import start_thread

logger = logging.getLogger("modelyard.dataset.ingest")

HANDOFF_BYTES = 1024 * 1024
PIPE_CHUNKS = 4


@dataclass(frozen=True)
class IngestResult:
    conversion: Conversion
    size_bytes: int
    sha256: str
    encoding: str


FirstPass = Conversion | TypeConflictError | NotUtf8Error | None


class Ingest:
    def __init__(
        self,
        store: BlobStore,
        cache: ParquetCache | None,
        dataset_id: str,
        fmt: CsvFormat,
        limits: Limits,
        options: ProfileOptions,
        max_upload_bytes: int,
    ) -> None:
        self._store = store
        self._cache = cache
        self._dataset_id = dataset_id
        self._fmt = fmt
        self._limits = limits
        self._options = options
        self._max_upload_bytes = max_upload_bytes
        self._chunks = Pipe(PIPE_CHUNKS)  # event loop → writer thread
        self._feed = Pipe(PIPE_CHUNKS)  # writer thread → first conversion pass
        self._cancelled = threading.Event()
        self._digest = hashlib.sha256()
        self._inspector = ContentInspector()
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._threads: list[asyncio.Future[None]] = []
        self._redo: asyncio.Future[Conversion] | None = None
        self._first_pass: FirstPass = None
        self.size_bytes = 0

    # -- receiving (event loop) -------------------------------------------------------

    async def receive(self, chunks: AsyncIterator[bytes]) -> None:
        """Take the upload's bytes as they arrive; raises as soon as the upload is refused."""
        self._threads = [
            start_thread(self._write_original, f"ingest-write-{self._dataset_id[:8]}"),
            start_thread(self._convert_first_pass, f"ingest-convert-{self._dataset_id[:8]}"),
        ]
        pending = bytearray()
        sniffed = False
        async for chunk in chunks:
            self.raise_if_failed()
            self._count(len(chunk))
            if not sniffed and len(pending) + len(chunk) >= SNIFF_BYTES:
                check_signature(bytes(pending) + chunk[:SNIFF_BYTES])
                sniffed = True
            if not pending and len(chunk) >= HANDOFF_BYTES:
                await self._hand_off(chunk)  # already big enough: no copy
                continue
            pending += chunk
            if len(pending) >= HANDOFF_BYTES:
                await self._hand_off(bytes(pending))
                pending.clear()
        if not sniffed:
            check_signature(bytes(pending))
        if pending:
            await self._hand_off(bytes(pending))
        self._chunks.finish()

    def _count(self, size: int) -> None:
        self.size_bytes += size
        if self.size_bytes > self._max_upload_bytes:
            raise resource_exhausted(
                reasons.UPLOAD_TOO_LARGE,
                f"the upload is larger than the limit of {self._max_upload_bytes} bytes",
                limit_bytes=str(self._max_upload_bytes),
            )

    async def _hand_off(self, data: bytes) -> None:
        try:
            if not self._chunks.try_put(data):
                await asyncio.to_thread(self._chunks.put, data)
        except PipeAbortedError:
            self.raise_if_failed()
            raise
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: BaseException) -> None:
        with self._failure_lock:
            if self._failure is None:
                self._failure = error
        self._cancelled.set()
        self._chunks.abort()
        self._feed.abort()

    # -- threads -------------------------------------------------------------------------

    def _write_original(self) -> None:
        writer = self._store.open_writer(original_key(self._dataset_id))
        try:
            while (data := self._chunks.get()) is not None:
                self._inspector.update(data)
                self._feed.put(data)  # first, so that the conversion never waits for S3
                self._digest.update(data)
                writer.write(data)
            self._inspector.finish()
            # The verdict on the encoding is final: the first pass may end now, and
            # finish its Parquet file while the original's upload completes.
            self._feed.finish()
            writer.commit()
        except BaseException as error:
            writer.abort()
            if not isinstance(error, PipeAbortedError):
                self._fail(error)

    def _convert_first_pass(self) -> None:
        sink = self._open_parquet()
        source = pipe_reader(self._feed, keep_bytes=2 * self._limits.max_row_bytes)
        try:
            conversion = convert(
                source, self._fmt, self._limits, self._options, sink, self._cancelled
            )
            if not self._inspector.is_utf8:
                raise NotUtf8Error
            sink.commit()
            self._first_pass = conversion
        except (TypeConflictError, NotUtf8Error) as redo:
            sink.abort()
            self._feed.close_reader()  # the rest of the upload still goes to the blob store
            self._first_pass = redo
        except BaseException as error:
            sink.abort()
            self._feed.close_reader()
            if not self._cancelled.is_set() and not isinstance(
                error, PipeAbortedError | IngestCancelledError
            ):
                self._fail(error)

    # -- after the last byte --------------------------------------------------------------

    async def wait_stored(self) -> tuple[int, str]:
        """Wait until the original is stored; its size and SHA-256."""
        await asyncio.shield(self._threads[0])
        self.raise_if_failed()
        return self.size_bytes, self._digest.hexdigest()

    async def wait_converted(self) -> IngestResult:
        await asyncio.shield(self._threads[1])
        self.raise_if_failed()
        first_pass = self._first_pass
        if isinstance(first_pass, Conversion):
            conversion = first_pass
        else:
            self._redo = start_thread(
                lambda: self._convert_from_original(first_pass),
                f"ingest-redo-{self._dataset_id[:8]}",
            )
            conversion = await asyncio.shield(self._redo)
        return IngestResult(
            conversion, self.size_bytes, self._digest.hexdigest(), self._inspector.encoding
        )

    def _convert_from_original(self, first_pass: FirstPass) -> Conversion:
        fmt = replace(self._fmt, encoding=self._inspector.encoding)
        logger.info(
            "converting again from the stored original",
            extra={"why": type(first_pass).__name__, "encoding": fmt.encoding},
        )
        if isinstance(first_pass, TypeConflictError) and fmt.encoding == UTF8:
            return convert_with_inferred_types(
                self._open_original,
                self._open_parquet,
                fmt,
                self._limits,
                self._options,
                self._cancelled,
                first_pass.source_names,
            )
        return convert_file(
            self._open_original,
            self._open_parquet,
            fmt,
            self._limits,
            self._options,
            self._cancelled,
        )

    @contextlib.contextmanager
    def _open_original(self) -> Iterator[RecordingReader]:
        stream = self._store.open_reader(original_key(self._dataset_id))
        try:
            yield stream_reader(stream, keep_bytes=2 * self._limits.max_row_bytes)
        finally:
            stream.close()

    def _open_parquet(self) -> BlobWriter:
        writer = self._store.open_writer(parquet_key(self._dataset_id))
        return self._cache.caching(writer, self._dataset_id) if self._cache else writer

    # -- giving up ---------------------------------------------------------------------------

    async def discard(self) -> None:
        """Stop every thread of this upload and remove whatever it stored."""
        self._cancelled.set()
        self._chunks.abort()
        self._feed.abort()
        threads: list[asyncio.Future[None] | asyncio.Future[Conversion]] = [*self._threads]
        if self._redo is not None:
            threads.append(self._redo)
        for thread in threads:
            with contextlib.suppress(BaseException):
                await asyncio.shield(thread)
        await asyncio.to_thread(self._store.delete_prefix, dataset_prefix(self._dataset_id))
        if self._cache is not None:
            await asyncio.to_thread(self._cache.discard, self._dataset_id)
