"""DatasetService over gRPC: dataset states, versions, and hand-off to ingest and reading.

Checks of the requests are in `validation.py`, the mapping of rows to messages
in `messages.py`, the pace an upload's client must keep in `upload_stream.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO, TypeVar

import grpc
from botocore.exceptions import BotoCoreError, ClientError
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime.errors import (
    ServiceError,
    failed_precondition,
    invalid_argument,
    not_found,
    unavailable,
)
from runtime.logs import log_context
from runtime.memory import release_free_memory
from runtime.pagination import page_tail, parse_page
from services.dataset import metrics, reasons
from services.dataset.blobstore import (
    BlobNotFoundError,
    BlobStore,
    dataset_prefix,
    original_key,
    parquet_key,
)
from services.dataset.cache import ParquetCache
from services.dataset.convert import CsvFormat, IngestCancelledError, Limits, ProfileOptions
from services.dataset.ingest import Ingest, IngestOptions, IngestResult
from services.dataset.messages import limited, stored_details, to_message
from services.dataset.models import DatasetRecord
from services.dataset.pipe import PipeAbortedError
from services.dataset.reading import ArrowStream, csv_chunks, read_chunks
from services.dataset.repository import (
    FAILED,
    IN_PROGRESS,
    READY,
    DatasetRepository,
    ListFilters,
    ReadyFields,
    RequestIdTakenError,
)
from services.dataset.settings import DatasetSettings
from services.dataset.threads import iterate_in_thread
from services.dataset.upload_stream import Pace, UploadMessages
from services.dataset.validation import (
    validate_batch_rows,
    validate_dataset_id,
    validate_delimiter,
    validate_display_name,
    validate_download_format,
    validate_projection,
    validate_reference,
    validate_request_id,
    validate_sheet,
)

logger = logging.getLogger("modelyard.dataset")

T = TypeVar("T")
State = dataset_pb2.Dataset.State
Header = dataset_service_pb2.UploadDatasetHeader
DownloadFormat = dataset_service_pb2.DownloadDatasetRequest.Format

DEFAULT_BATCH_ROWS = 65_536
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_NAME_AT_VERSION = re.compile(r"^(?P<name>.+)@(?P<version>[1-9][0-9]{0,17})$")


def _upload_aborted() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.CANCELLED,
        reasons.UPLOAD_ABORTED,
        "the upload was cut off before its end (client cancelled or disconnected, "
        "or the service stopped)",
    )


def _blob_store_error(error: Exception) -> ServiceError:
    return unavailable(
        reasons.BLOB_STORE_UNAVAILABLE, f"the blob store failed: {type(error).__name__}"
    )


def _as_service_error(error: Exception) -> ServiceError:
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, IngestCancelledError | PipeAbortedError):
        return _upload_aborted()
    if isinstance(error, BotoCoreError | ClientError | OSError):
        return _blob_store_error(error)
    logger.error("ingest failed", exc_info=error)
    return ServiceError(grpc.StatusCode.INTERNAL, reasons.INTERNAL, "internal error during ingest")


# -- the servicer ---------------------------------------------------------------------------


class DatasetServicer(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(
        self,
        settings: DatasetSettings,
        repository: DatasetRepository,
        store: BlobStore,
        cache: ParquetCache | None = None,
    ) -> None:
        self._settings = settings
        self._repository = repository
        self._store = store
        self._cache = cache
        self._upload_slots = asyncio.Semaphore(settings.max_concurrent_uploads)
        self._limits = Limits(
            max_columns=settings.max_columns,
            max_field_bytes=settings.max_field_bytes,
            max_row_bytes=settings.max_row_bytes,
            max_column_name_chars=settings.max_column_name_chars,
        )
        self._profile_options = ProfileOptions(
            exact_distinct_limit=settings.exact_distinct_limit,
            top_values=settings.top_values,
            row_group_rows=settings.row_group_rows,
        )
        self._pace = Pace(settings.upload_idle_seconds, settings.upload_min_bytes_per_second)
        self._spool_dir = settings.state_dir.resolve() / "ingest-spool"
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        # Uploads this process is working on (the janitor renews their leases), and
        # clean-ups still running after their call ended (awaited at shutdown).
        self.active_uploads: set[str] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._memory_releaser: asyncio.Task[None] | None = None

    async def drain(self) -> None:
        """Wait for the clean-up of uploads that ended badly."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        if self._memory_releaser is not None:
            self._memory_releaser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._memory_releaser

    def _release_memory_while_ingesting(self) -> None:
        """Start handing the C heap's free pages back periodically, until no upload runs.

        Ingest frees tens of MiB of buffers a second across threads; glibc keeps the
        freed pages until they are trimmed, and in a long upload they add up to the
        largest share of the process's peak RSS beyond what it uses.
        """
        interval = self._settings.memory_release_seconds
        if interval <= 0 or (self._memory_releaser and not self._memory_releaser.done()):
            return

        async def release_periodically() -> None:
            while self.active_uploads:
                await asyncio.sleep(interval)
                await asyncio.to_thread(release_free_memory)

        self._memory_releaser = asyncio.create_task(release_periodically())

    # -- UploadDataset ------------------------------------------------------------------------

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[dataset_service_pb2.UploadDatasetRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_pb2.Dataset:
        messages = UploadMessages(aiter(request_iterator))
        too_slow = False
        try:
            return await self._upload(messages)
        except ServiceError as error:
            too_slow = error.reason == reasons.UPLOAD_TOO_SLOW
            raise
        finally:
            await messages.drain(self._pace, too_slow)

    async def _upload(self, messages: UploadMessages) -> dataset_pb2.Dataset:
        header = await self._read_header(messages)
        display_name = await self._display_name(header)
        delimiter = validate_delimiter(header.delimiter)
        options = IngestOptions(
            fmt=CsvFormat(
                delimiter=delimiter or ",",
                has_header=header.has_header if header.HasField("has_header") else True,
            ),
            delimiter_given=bool(delimiter),
            sheet=validate_sheet(header.sheet),
            limits=self._limits,
            profile=self._profile_options,
            max_upload_bytes=self._settings.max_upload_bytes,
            spool_dir=self._spool_dir,
        )
        request_id = validate_request_id(header.request_id)
        if request_id and (earlier := await self._replay(request_id)) is not None:
            return earlier
        async with self._upload_slots:
            record = DatasetRecord(
                dataset_id=uuid.uuid4().hex,
                display_name=display_name,
                request_id=request_id,
                delimiter=delimiter,
                has_header=options.fmt.has_header,
                row_count=0,
                size_bytes=0,
                sha256="",
            )
            try:
                await self._repository.create_uploading(record)
            except RequestIdTakenError:
                assert request_id is not None
                if (earlier := await self._replay(request_id)) is not None:
                    return earlier
                raise self._upload_in_progress(request_id) from None
            with log_context(dataset_id=record.dataset_id):
                return await self._ingest(record, options, self._chunks(messages))

    async def _display_name(self, header: Header) -> str:
        """The upload's display name: given, or that of the dataset it is a new version of."""
        if not header.new_version_of:
            return validate_display_name(header.display_name)
        earlier = await self._lookup(header.new_version_of)
        if header.display_name and header.display_name != earlier.display_name:
            raise invalid_argument(
                reasons.DISPLAY_NAME_MISMATCH,
                f"display_name {header.display_name[:200]!r} differs from the name of the "
                f"dataset this is a new version of ({earlier.display_name!r}); leave it empty",
            )
        return earlier.display_name

    async def _read_header(self, messages: UploadMessages) -> Header:
        first = await messages.next()
        if first is None or first.WhichOneof("payload") != "header":
            raise invalid_argument(
                reasons.HEADER_MISSING,
                "the first message of an upload must be its header (display_name, options)",
            )
        header: Header = first.header
        return header

    async def _chunks(self, messages: UploadMessages) -> AsyncIterator[bytes]:
        async for message, chunk in messages.paced(self._pace):
            if message.WhichOneof("payload") == "header":
                raise invalid_argument(
                    reasons.HEADER_REPEATED,
                    "an upload has exactly one header, in its first message",
                )
            yield chunk

    async def _replay(self, request_id: str) -> dataset_pb2.Dataset | None:
        """The dataset an earlier upload with this request_id produced, when READY."""
        earlier = await self._repository.get_by_request_id(request_id)
        if earlier is None or earlier.state not in (READY, *IN_PROGRESS):
            return None
        if earlier.state != READY:
            raise self._upload_in_progress(request_id)
        logger.info(
            "upload repeated: returning the earlier dataset",
            extra={"dataset_id": earlier.dataset_id},
        )
        return to_message(earlier)

    @staticmethod
    def _upload_in_progress(request_id: str) -> ServiceError:
        return ServiceError(
            grpc.StatusCode.ABORTED,
            reasons.UPLOAD_IN_PROGRESS,
            "an upload with this request_id is still in progress; retry when it has finished",
            {"request_id": request_id},
        )

    async def _ingest(
        self, record: DatasetRecord, options: IngestOptions, chunks: AsyncIterator[bytes]
    ) -> dataset_pb2.Dataset:
        dataset_id = record.dataset_id
        ingest = Ingest(self._store, self._cache, dataset_id, options)
        started = time.perf_counter()
        self.active_uploads.add(dataset_id)
        self._release_memory_while_ingesting()
        try:
            await ingest.receive(chunks)
            received = time.perf_counter()
            size_bytes, sha256 = await ingest.wait_stored()
            stored = time.perf_counter()
            await self._repository.mark_processing(dataset_id, size_bytes, sha256)
            result = await ingest.wait_converted()
            await self._mark_ready(record, result)
        except asyncio.CancelledError:
            self._give_up(ingest, dataset_id, _upload_aborted())
            raise
        except Exception as error:
            failure = _as_service_error(error)
            await asyncio.shield(self._give_up(ingest, dataset_id, failure))
            raise ServiceError(
                failure.code,
                failure.reason,
                limited(failure.message),
                {**failure.metadata, "dataset_id": dataset_id},
            ) from None
        finally:
            self.active_uploads.discard(dataset_id)
            if not self.active_uploads:
                await asyncio.to_thread(release_free_memory)
        metrics.INGESTED_BYTES.inc(result.size_bytes)
        metrics.INGEST_SECONDS.observe(time.perf_counter() - started)
        metrics.UPLOADS.labels("READY").inc()
        source = result.source_format
        logger.info(
            "dataset ready",
            extra={
                "rows": result.conversion.row_count,
                "columns": len(result.conversion.columns),
                "size_bytes": result.size_bytes,
                "format": dataset_pb2.SourceFormat.Format.Name(source.format),
                "compression": dataset_pb2.SourceFormat.Compression.Name(source.compression),
                "encoding": source.encoding,
                "header_repairs": len(result.conversion.header_repairs),
                "seconds": round(time.perf_counter() - started, 3),
                "receive_seconds": round(received - started, 3),
                "store_seconds": round(stored - received, 3),
                "convert_seconds": round(time.perf_counter() - stored, 3),
            },
        )
        ready = await self._repository.get(dataset_id)
        assert ready is not None
        return to_message(ready)

    async def _mark_ready(self, record: DatasetRecord, result: IngestResult) -> None:
        conversion = result.conversion
        fields = ReadyFields(
            details=stored_details(
                conversion.columns, conversion.header_repairs, result.source_format
            ),
            row_count=conversion.row_count,
            delimiter=result.delimiter,
            original_codec=result.original_codec,
        )
        if not await self._repository.mark_ready(record, fields):
            raise unavailable(
                reasons.INGEST_INTERRUPTED,
                "the upload took too long to renew its lease and was given up; upload again",
            )

    def _give_up(
        self, ingest: Ingest, dataset_id: str, failure: ServiceError
    ) -> asyncio.Task[None]:
        """Remove the upload's files and record why it failed, even if the call is cancelled."""

        async def clean_up() -> None:
            try:
                await ingest.discard()
            except Exception:
                logger.exception("could not remove the files of a failed upload")
            await self._repository.mark_failed(
                dataset_id, failure.code.value[0], failure.reason, limited(failure.message)
            )
            metrics.UPLOADS.labels(failure.reason).inc()
            logger.info(
                "upload failed",
                extra={
                    "dataset_id": dataset_id,
                    "reason": failure.reason,
                    "code": failure.code.name,
                },
            )

        task = asyncio.create_task(clean_up())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    # -- lookups ---------------------------------------------------------------------------------

    async def _record(self, dataset_id: str) -> DatasetRecord:
        record = await self._repository.get(validate_dataset_id(dataset_id))
        if record is None:
            raise _not_found(dataset_id)
        return record

    async def _ready_record(self, dataset_id: str) -> DatasetRecord:
        record = await self._record(dataset_id)
        if record.state != READY:
            raise failed_precondition(
                reasons.DATASET_NOT_READY,
                f"dataset {dataset_id!r} is {record.state}, not READY",
                dataset_id=dataset_id,
                state=record.state,
            )
        return record

    async def _lookup(self, reference: str) -> DatasetRecord:
        """A READY dataset by id, by display name (latest version), or by name@version."""
        validate_reference(reference)
        record = await self._repository.get(reference) if len(reference) <= 32 else None
        if record is not None and record.state == READY:
            return record
        if (record := await self._repository.latest_version(reference)) is not None:
            return record
        if match := _NAME_AT_VERSION.match(reference):
            name, version = match["name"], int(match["version"])
            if (record := await self._repository.version(name, version)) is not None:
                return record
        raise _not_found(reference)

    async def GetDataset(
        self,
        request: dataset_service_pb2.GetDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_pb2.Dataset:
        return to_message(await self._record(request.dataset_id))

    async def LookupDataset(
        self,
        request: dataset_service_pb2.LookupDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_service_pb2.LookupDatasetResponse:
        return dataset_service_pb2.LookupDatasetResponse(
            dataset=to_message(await self._lookup(request.reference))
        )

    async def ListDatasets(
        self,
        request: dataset_service_pb2.ListDatasetsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_service_pb2.ListDatasetsResponse:
        filters = ListFilters(
            display_name_contains=request.display_name_contains,
            state=State.Name(request.state) if request.state else None,
        )
        page = parse_page(request.page_size, request.page_token, filters.as_dict())
        records, next_token = page_tail(
            await self._repository.list_page(page, filters),
            page,
            key=lambda record: (record.create_time, record.dataset_id),
            filters=filters.as_dict(),
        )
        return dataset_service_pb2.ListDatasetsResponse(
            datasets=[to_message(record) for record in records], next_page_token=next_token
        )

    async def ListDatasetVersions(
        self,
        request: dataset_service_pb2.ListDatasetVersionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_service_pb2.ListDatasetVersionsResponse:
        display_name = validate_display_name(request.display_name)
        scope = {"display_name": display_name}
        page = parse_page(request.page_size, request.page_token, scope)
        records, next_token = page_tail(
            await self._repository.list_versions(display_name, page),
            page,
            key=lambda record: (record.version, ""),
            filters=scope,
        )
        return dataset_service_pb2.ListDatasetVersionsResponse(
            datasets=[to_message(record) for record in records], next_page_token=next_token
        )

    async def DeleteDataset(
        self,
        request: dataset_service_pb2.DeleteDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> empty_pb2.Empty:
        record = await self._record(request.dataset_id)
        if record.state in IN_PROGRESS:
            raise failed_precondition(
                reasons.DATASET_BUSY,
                f"dataset {record.dataset_id!r} is still {record.state}; delete it once it is "
                "READY or FAILED",
                dataset_id=record.dataset_id,
            )
        # One caller wins the delete; for every other one the dataset is already gone.
        if not await self._repository.claim_delete(record.dataset_id, (READY, FAILED)):
            raise _not_found(record.dataset_id)
        try:
            await asyncio.to_thread(self._store.delete_prefix, dataset_prefix(record.dataset_id))
            if self._cache is not None:
                await asyncio.to_thread(self._cache.discard, record.dataset_id)
        except (BotoCoreError, ClientError, OSError) as error:
            await self._repository.release_delete(record.dataset_id)
            raise _blob_store_error(error) from error
        await self._repository.delete(record.dataset_id)
        logger.info("dataset deleted", extra={"dataset_id": record.dataset_id})
        return empty_pb2.Empty()

    # -- streams ----------------------------------------------------------------------------------

    async def DownloadDataset(
        self,
        request: dataset_service_pb2.DownloadDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        download_format = validate_download_format(request.format)
        record = await self._ready_record(request.dataset_id)
        content_type, chunks = self._download_chunks(record, download_format)
        started = time.perf_counter()
        sent = 0
        async for chunk in self._blob_stream(iterate_in_thread(chunks, "download")):
            sent += len(chunk)
            yield httpbody_pb2.HttpBody(content_type=content_type, data=chunk)
        logger.info(
            "dataset downloaded",
            extra={
                "dataset_id": record.dataset_id,
                "format": DownloadFormat.Name(download_format),
                "bytes": sent,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    def _download_chunks(
        self, record: DatasetRecord, download_format: DownloadFormat
    ) -> tuple[str, Iterator[bytes]]:
        """The media type and the chunks of the file a download streams."""
        if download_format == DownloadFormat.ORIGINAL:
            chunks = read_chunks(
                self._store,
                original_key(record.dataset_id, record.original_codec),
                DOWNLOAD_CHUNK_BYTES,
                decompress=bool(record.original_codec),
            )
            return _content_type(to_message(record).source_format), chunks
        if download_format == DownloadFormat.PARQUET:
            chunks = read_chunks(self._store, parquet_key(record.dataset_id), DOWNLOAD_CHUNK_BYTES)
            return PARQUET_MEDIA_TYPE, chunks
        # Opened on the download's own thread, as the stream starts.
        return CSV_MEDIA_TYPE, csv_chunks(
            lambda: self._open_parquet(record.dataset_id), DOWNLOAD_CHUNK_BYTES
        )

    async def ReadDataset(  # type: ignore[override]  # yields pre-serialized responses
        self,
        request: dataset_service_pb2.ReadDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        """Yields serialized ReadDatasetResponses (registered with a pass-through serializer)."""
        record = await self._ready_record(request.dataset_id)
        names = [column.name for column in to_message(record).columns]
        columns = validate_projection(names, list(request.columns), record.dataset_id)
        batch_rows = validate_batch_rows(request.batch_rows)
        started = time.perf_counter()
        try:
            stream = await asyncio.to_thread(
                ArrowStream,
                await asyncio.to_thread(self._open_parquet, record.dataset_id),
                columns,
                batch_rows or DEFAULT_BATCH_ROWS,
                self._settings.read_message_bytes,
            )
        except (BotoCoreError, ClientError, OSError, BlobNotFoundError) as error:
            raise _blob_store_error(error) from error
        opened = time.perf_counter()
        sent = 0
        try:
            async for message in self._blob_stream(iterate_in_thread(stream.messages(), "read")):
                sent += len(message)
                yield message
        finally:
            await asyncio.to_thread(stream.close)
        logger.info(
            "dataset read",
            extra={
                "dataset_id": record.dataset_id,
                "columns": len(columns),
                "bytes": sent,
                "open_seconds": round(opened - started, 3),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    async def GetParquetAccess(
        self,
        request: dataset_service_pb2.GetParquetAccessRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_service_pb2.GetParquetAccessResponse:
        record = await self._ready_record(request.dataset_id)
        try:
            access = await asyncio.to_thread(
                self._store.read_access,
                parquet_key(record.dataset_id),
                self._settings.parquet_access_seconds,
            )
        except (BotoCoreError, ClientError, OSError, BlobNotFoundError) as error:
            raise _blob_store_error(error) from error
        response = dataset_service_pb2.GetParquetAccessResponse(
            dataset_id=record.dataset_id,
            url=access.url,
            size_bytes=access.size_bytes,
            row_count=to_message(record).row_count,
        )
        if access.expires_at is not None:
            response.expire_time.FromNanoseconds(int(access.expires_at * 1e9))
        logger.info(
            "parquet access given",
            extra={"dataset_id": record.dataset_id, "expires": access.expires_at is not None},
        )
        return response

    def _open_parquet(self, dataset_id: str) -> BinaryIO:
        key = parquet_key(dataset_id)
        if self._cache is not None:
            return self._cache.open(self._store, key, dataset_id)
        return self._store.open_random_access(key)

    @staticmethod
    async def _blob_stream(items: AsyncIterator[T]) -> AsyncIterator[T]:
        try:
            async for item in items:
                yield item
        except (BotoCoreError, ClientError, OSError, BlobNotFoundError) as error:
            raise _blob_store_error(error) from error


def _not_found(reference: str) -> ServiceError:
    return not_found(
        reasons.DATASET_NOT_FOUND, f"no dataset {reference[:200]!r}", dataset_id=reference[:200]
    )


CSV_MEDIA_TYPE = "text/csv"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
_CONTENT_TYPES = {
    dataset_pb2.SourceFormat.Format.FORMAT_PARQUET: PARQUET_MEDIA_TYPE,
    dataset_pb2.SourceFormat.Format.FORMAT_XLSX: (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    ),
}
_COMPRESSED_TYPES = {
    dataset_pb2.SourceFormat.Compression.COMPRESSION_GZIP: "application/gzip",
    dataset_pb2.SourceFormat.Compression.COMPRESSION_ZSTD: "application/zstd",
    dataset_pb2.SourceFormat.Compression.COMPRESSION_BZIP2: "application/x-bzip2",
}


def _content_type(source: dataset_pb2.SourceFormat) -> str:
    """The media type of the original file, as uploaded."""
    if source.format in _CONTENT_TYPES:
        return _CONTENT_TYPES[source.format]
    return _COMPRESSED_TYPES.get(source.compression, CSV_MEDIA_TYPE)
