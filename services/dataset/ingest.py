"""One upload, from the first byte to a typed Parquet copy, in bounded memory.

    event loop ──chunks──▶ writer thread ──▶ original blob (S3 segments as they fill)
         │                     sha256, size
         └──────feed──────▶ conversion thread ──▶ Parquet blob + profile

What the file is comes from its first bytes (`content.sniff`):

- delimited text (plain, gzip, zstd or bzip2; UTF-8, UTF-16 or windows-1252)
  is decoded and converted while the upload is still arriving, so a file
  that converts in one pass is READY soon after its last byte. When that
  first pass cannot stand (a type changes late in the file, or the text
  turns out not to be UTF-8), the conversion is redone from the stored
  original once the upload is complete;
- Parquet and XLSX are read from their end and from an index: the conversion
  thread spools them to a local file, then validates and converts them once
  the last byte is there.

Both hand-offs are bounded pipes: a slow stage slows the client down instead
of buffering. The event loop hands every chunk to both, so the original is
stored as fast as it arrives whatever the conversion's backlog: once the last
byte is in, completing the original's upload overlaps the conversion's end
instead of waiting for it. Nothing is left behind on failure or cancellation: `discard()`
stops the threads and removes everything under the dataset's blob prefix (a
multipart upload in flight is aborted) and the local spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import zstandard

from modelyard.dataset.v1 import dataset_pb2
from runtime.errors import invalid_argument, resource_exhausted
from services.dataset import reasons
from services.dataset.blobstore import (
    ORIGINAL_CODEC,
    BlobStore,
    BlobWriter,
    dataset_prefix,
    original_key,
    parquet_key,
)
from services.dataset.cache import ParquetCache
from services.dataset.content import (
    SNIFF_BYTES,
    UTF8,
    WINDOWS_1252,
    Compression,
    DecodedText,
    Format,
    Sniffed,
    describe,
    sniff,
)
from services.dataset.convert import (
    Conversion,
    ConversionJob,
    CsvFormat,
    IngestCancelledError,
    Limits,
    NotUtf8Error,
    ProfileOptions,
    TypeConflictError,
    convert,
)
from services.dataset.headers import SNIFF_TEXT_BYTES, detect_delimiter
from services.dataset.inference import convert_file, convert_with_inferred_types
from services.dataset.parquet_input import convert_parquet
from services.dataset.pipe import (
    Pipe,
    PipeAbortedError,
    RecordingReader,
    pipe_reader,
)
from services.dataset.threads import start_thread
from services.dataset.xlsx import SheetText

logger = logging.getLogger("modelyard.dataset.ingest")

HANDOFF_BYTES = 1024 * 1024
PIPE_CHUNKS = 4
TEXT_READ_BYTES = 1024 * 1024
SPOOL_COPY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class IngestOptions:
    """What the upload's header and the service's settings say about one ingest."""

    fmt: CsvFormat
    delimiter_given: bool
    sheet: str
    limits: Limits
    profile: ProfileOptions
    max_upload_bytes: int
    spool_dir: Path


@dataclass(frozen=True)
class IngestResult:
    conversion: Conversion
    size_bytes: int
    sha256: str
    source_format: dataset_pb2.SourceFormat
    delimiter: str
    original_codec: str


FirstPass = Conversion | TypeConflictError | NotUtf8Error | None


def _original_compressor() -> Callable[[bytes], bytes]:
    """zstd level 1 with a smaller match table (2**12 entries, not 2**14): on CSV text
    15 % less CPU for a ratio of 2.32 instead of 2.33 (what a CSV's digits give is the
    entropy coding, not matches). Each chunk becomes a frame; the frames, one after
    the other, are one zstd stream."""
    parameters = zstandard.ZstdCompressionParameters.from_level(1, hash_log=12)
    return zstandard.ZstdCompressor(compression_params=parameters).compress


class Ingest:
    def __init__(
        self, store: BlobStore, cache: ParquetCache | None, dataset_id: str, options: IngestOptions
    ) -> None:
        self._store = store
        self._cache = cache
        self._dataset_id = dataset_id
        self._options = options
        self._fmt = options.fmt
        self._chunks = Pipe(PIPE_CHUNKS)  # event loop → writer thread
        self._feed = Pipe(PIPE_CHUNKS)  # event loop → first conversion pass
        self._cancelled = threading.Event()
        self._digest = hashlib.sha256()
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._threads: list[asyncio.Future[None]] = []
        self._redo: asyncio.Future[Conversion] | None = None
        self._first_pass: FirstPass = None
        self._sniffed = Sniffed(Format.FORMAT_DELIMITED_TEXT)
        self._text_encoding = "UTF-8"
        self._sheet = ""
        self._kept_as_is = False
        self._original_codec = ""  # decided with the format, before the first byte is stored
        self._spool = Path(
            tempfile.mkdtemp(prefix=f"ingest-{dataset_id[:8]}-", dir=options.spool_dir)
        )
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
                self._identify(bytes(pending) + chunk[:SNIFF_BYTES])
                sniffed = True
            if not pending and len(chunk) >= HANDOFF_BYTES:
                await self._hand_off(chunk)  # already big enough: no copy
                continue
            pending += chunk
            if len(pending) >= HANDOFF_BYTES:
                await self._hand_off(bytes(pending))
                pending.clear()
        if not sniffed:
            self._identify(bytes(pending))
        if pending:
            await self._hand_off(bytes(pending))
        self._feed.finish()
        self._chunks.finish()

    def _identify(self, head: bytes) -> None:
        """What the file is, from its first bytes, before any of them is handed on."""
        self._sniffed = sniff(head)
        if (
            self._sniffed.format == Format.FORMAT_DELIMITED_TEXT
            and self._sniffed.compression == Compression.COMPRESSION_NONE
        ):
            self._original_codec = ORIGINAL_CODEC
        if self._options.sheet and self._sniffed.format != Format.FORMAT_XLSX:
            raise invalid_argument(
                reasons.SHEET_NOT_FOUND,
                "a sheet was named, but the file is not an XLSX workbook",
                sheet=self._options.sheet[:100],
            )

    def _count(self, size: int) -> None:
        self.size_bytes += size
        limit = self._options.max_upload_bytes
        if self.size_bytes > limit:
            raise resource_exhausted(
                reasons.UPLOAD_TOO_LARGE,
                f"the upload is larger than the limit of {limit} bytes",
                limit_bytes=str(limit),
            )

    async def _hand_off(self, data: bytes) -> None:
        """`data` to the conversion and to the writer (the same bytes, not copied)."""
        try:
            for pipe in (self._feed, self._chunks):
                if not pipe.try_put(data):
                    await asyncio.to_thread(pipe.put, data)
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
        writer: BlobWriter | None = None
        try:
            first = self._chunks.get()  # after it, the format (and so the codec) is known
            key = original_key(self._dataset_id, self._original_codec)
            # A Parquet original may become the Parquet copy by a server-side copy, which
            # needs one whole object: written whole, rather than joined then (blobstore.py).
            if self._sniffed.format == Format.FORMAT_PARQUET:
                writer = self._store.open_writer(key)
            else:
                writer = self._store.open_segmented_writer(key)
            compress = _original_compressor() if self._original_codec else None
            data = first
            while data is not None:
                self._digest.update(data)
                writer.write(compress(data) if compress else data)
                data = self._chunks.get()
            writer.commit()
        except BaseException as error:
            if writer is not None:
                writer.abort()
            if not isinstance(error, PipeAbortedError):
                self._fail(error)

    def _convert_first_pass(self) -> None:
        try:
            self._first_pass = self._first_pass_of_format()
        except (TypeConflictError, NotUtf8Error) as redo:
            self._first_pass = redo
        except BaseException as error:
            if not self._cancelled.is_set() and not isinstance(
                error, PipeAbortedError | IngestCancelledError
            ):
                self._fail(error)
        finally:
            self._feed.close_reader()  # the rest of the upload still goes to the blob store

    def _first_pass_of_format(self) -> Conversion:
        raw = pipe_reader(self._feed, keep_bytes=0)
        raw.peek_chunk()  # the first bytes: after them, the format is known
        if self._sniffed.format == Format.FORMAT_PARQUET:
            return self._convert_parquet(self._spooled(raw, "upload.parquet"))
        if self._sniffed.format == Format.FORMAT_XLSX:
            return self._convert_xlsx(self._spooled(raw, "upload.xlsx"))
        return self._convert_text_as_it_arrives(raw)

    def _convert_text_as_it_arrives(self, raw: RecordingReader) -> Conversion:
        text = DecodedText(raw, self._sniffed.compression, self._options.max_upload_bytes)
        if not self._options.delimiter_given:
            head = text.peek(SNIFF_TEXT_BYTES)
            self._fmt = replace(self._fmt, delimiter=detect_delimiter(head, UTF8))
        self._text_encoding = text.text_encoding
        source = RecordingReader(
            lambda: text.read(TEXT_READ_BYTES), keep_bytes=2 * self._options.limits.max_row_bytes
        )
        sink = self._open_parquet()
        try:
            conversion = convert(source, self._job(self._fmt), sink)
            if text.encoding != UTF8:
                raise NotUtf8Error
            sink.commit()
        except BaseException:
            sink.abort()
            raise
        return conversion

    def _spooled(self, raw: RecordingReader, name: str) -> Path:
        """The whole upload as a local file (formats read from their end)."""
        path = self._spool / name
        with path.open("wb") as out:
            while data := raw.read(SPOOL_COPY_BYTES):
                out.write(data)
        return path

    def _convert_parquet(self, path: Path) -> Conversion:
        result = convert_parquet(path, self._job(self._fmt))
        self._kept_as_is = result.kept_as_is
        if result.kept_as_is and self._cache is not None:
            self._cache.adopt(path, self._dataset_id)
        return result.conversion

    def _convert_xlsx(self, path: Path) -> Conversion:
        limits = self._options.limits
        sheet = SheetText(
            path, self._options.sheet, limits.max_columns, self._options.max_upload_bytes
        )
        self._sheet = sheet.sheet
        text_path = self._spool / "sheet.csv"
        with text_path.open("wb") as out:
            sheet.write_csv(out, self._cancelled)
        path.unlink(missing_ok=True)
        self._fmt = replace(self._fmt, delimiter=",", encoding=UTF8)
        return convert_file(self._job(self._fmt, open_source=self._open_local(text_path)))

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
        if self._kept_as_is:
            await asyncio.to_thread(
                self._store.copy, original_key(self._dataset_id), parquet_key(self._dataset_id)
            )
        await asyncio.to_thread(shutil.rmtree, self._spool, True)
        encoding = self._text_encoding if self._fmt.encoding == UTF8 else "windows-1252"
        return IngestResult(
            conversion,
            self.size_bytes,
            self._digest.hexdigest(),
            describe(self._sniffed, encoding, self._sheet),
            self._fmt.delimiter if self._sniffed.format != Format.FORMAT_PARQUET else "",
            self._original_codec,
        )

    def _convert_from_original(self, first_pass: FirstPass) -> Conversion:
        logger.info(
            "converting again from the stored original", extra={"why": type(first_pass).__name__}
        )
        if isinstance(first_pass, TypeConflictError) and self._fmt.encoding == UTF8:
            try:
                return convert_with_inferred_types(self._job(self._fmt), first_pass.source_names)
            except NotUtf8Error:
                pass
        self._fmt = replace(self._fmt, encoding=WINDOWS_1252)
        return convert_file(self._job(self._fmt))

    def _job(self, fmt: CsvFormat, open_source: object = None) -> ConversionJob:
        return ConversionJob(
            open_source=open_source or (lambda: self._open_original_text(fmt)),  # type: ignore[arg-type]
            open_sink=self._open_parquet,
            fmt=fmt,
            limits=self._options.limits,
            options=self._options.profile,
            cancelled=self._cancelled,
        )

    @contextlib.contextmanager
    def _open_original_text(self, fmt: CsvFormat) -> Iterator[RecordingReader]:
        stream = self._store.open_reader(original_key(self._dataset_id, self._original_codec))
        compression = (
            Compression.COMPRESSION_ZSTD if self._original_codec else self._sniffed.compression
        )
        try:
            text = DecodedText(stream, compression, self._options.max_upload_bytes)
            yield RecordingReader(
                lambda: text.read(TEXT_READ_BYTES),
                keep_bytes=2 * self._options.limits.max_row_bytes,
            )
            if fmt.encoding == UTF8 and text.finished and text.encoding != UTF8:
                raise NotUtf8Error
        finally:
            stream.close()

    def _open_local(self, path: Path) -> object:
        @contextlib.contextmanager
        def open_source() -> Iterator[RecordingReader]:
            with path.open("rb") as handle:
                yield RecordingReader(
                    lambda: handle.read(TEXT_READ_BYTES),
                    keep_bytes=2 * self._options.limits.max_row_bytes,
                )

        return open_source

    def _open_parquet(self) -> BlobWriter:
        # In segments: joined into one object only when a URL to it is first asked for.
        writer = self._store.open_segmented_writer(parquet_key(self._dataset_id))
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
        await asyncio.to_thread(shutil.rmtree, self._spool, True)
        if self._cache is not None:
            await asyncio.to_thread(self._cache.discard, self._dataset_id)
