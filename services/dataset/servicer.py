"""DatasetService over gRPC: validation, dataset states, and hand-off to ingest and reading."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator
from typing import Any, BinaryIO, TypeVar, cast

import grpc
from botocore.exceptions import BotoCoreError, ClientError
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime.errors import (
    ServiceError,
    code_from_number,
    failed_precondition,
    invalid_argument,
    make_status,
    not_found,
    unavailable,
)
from runtime.logs import log_context
from runtime.pagination import next_page_token, parse_page
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
from services.dataset.ingest import Ingest, IngestResult
from services.dataset.models import DatasetRecord
from services.dataset.pipe import PipeAbortedError
from services.dataset.reading import ArrowStream, read_chunks
from services.dataset.repository import (
    IN_PROGRESS,
    READY,
    DatasetRepository,
    ListFilters,
    RequestIdTakenError,
    as_utc,
)
from services.dataset.settings import DatasetSettings
from services.dataset.threads import iterate_in_thread

logger = logging.getLogger("modelyard.dataset")

T = TypeVar("T")
State = dataset_pb2.Dataset.State

MAX_DISPLAY_NAME_CHARS = 200
MAX_REQUEST_ID_CHARS = 200
DEFAULT_BATCH_ROWS = 65_536
MAX_BATCH_ROWS = 1_048_576
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
MAX_ERROR_MESSAGE_CHARS = 1000
DRAIN_MAX_BYTES = 256 * 1024 * 1024
DRAIN_MAX_SECONDS = 15.0


# -- validation ---------------------------------------------------------------------------


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def validate_display_name(name: str) -> str:
    if not name.strip() or len(name) > MAX_DISPLAY_NAME_CHARS or _has_control_characters(name):
        raise invalid_argument(
            reasons.DISPLAY_NAME_INVALID,
            f"display_name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters, "
            "not blank, without control characters",
        )
    return name


def validate_delimiter(delimiter: str) -> str:
    if delimiter in ("", ","):
        return ","
    if delimiter in ("\\t", "tab"):
        return "\t"
    if len(delimiter) != 1 or not delimiter.isascii() or delimiter in '"\r\n':
        raise invalid_argument(
            reasons.DELIMITER_INVALID,
            "delimiter must be one ASCII character other than a quote or a line break; "
            'use "\\t" for tab',
        )
    return delimiter


def validate_request_id(request_id: str) -> str | None:
    if not request_id:
        return None
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise invalid_argument(
            reasons.REQUEST_ID_INVALID,
            f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable characters",
        )
    return request_id


def validate_dataset_id(dataset_id: str) -> str:
    if not dataset_id:
        raise invalid_argument(reasons.DATASET_ID_INVALID, "dataset_id is required")
    return dataset_id


def _limited(message: str) -> str:
    return (
        message
        if len(message) <= MAX_ERROR_MESSAGE_CHARS
        else message[:MAX_ERROR_MESSAGE_CHARS] + "…"
    )


# -- records → messages -------------------------------------------------------------------


def to_message(record: DatasetRecord) -> dataset_pb2.Dataset:
    dataset = dataset_pb2.Dataset(
        dataset_id=record.dataset_id,
        display_name=record.display_name,
        state=cast(dataset_pb2.Dataset.State, State.Value(record.state)),
        csv_options=dataset_pb2.CsvOptions(
            delimiter=record.delimiter, has_header=record.has_header
        ),
        row_count=record.row_count,
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        request_id=record.request_id or "",
    )
    if record.columns:
        dataset.columns.extend(dataset_pb2.Dataset.FromString(record.columns).columns)
    if record.error_reason:
        dataset.error.CopyFrom(
            make_status(
                code_from_number(record.error_code or grpc.StatusCode.UNKNOWN.value[0]),
                record.error_reason,
                record.error_message or "",
                {"dataset_id": record.dataset_id},
            )
        )
    dataset.create_time.FromDatetime(as_utc(record.create_time))
    dataset.update_time.FromDatetime(as_utc(record.update_time))
    return dataset


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


async def _drain(messages: AsyncIterator[Any]) -> None:
    """Read what the client is still sending before answering an upload early.

    grpc's asyncio client reports INTERNAL ("Internal error from Core") instead
    of the server's status when its next write fails because the server has
    already answered (grpc/grpc#36066). Reading the rest of the stream, up to a
    bound, lets the client finish sending and see the real status and reason.
    """
    drained = 0
    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, grpc.RpcError):
        async with asyncio.timeout(DRAIN_MAX_SECONDS):
            async for message in messages:
                drained += len(message.chunk)
                if drained > DRAIN_MAX_BYTES:
                    break


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
        # Uploads this process is working on (the janitor renews their leases), and
        # clean-ups still running after their call ended (awaited at shutdown).
        self.active_uploads: set[str] = set()
        self._cleanups: set[asyncio.Task[None]] = set()

    async def drain(self) -> None:
        """Wait for the clean-up of uploads that ended badly."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    # -- UploadDataset ------------------------------------------------------------------------

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[dataset_service_pb2.UploadDatasetRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_pb2.Dataset:
        messages = aiter(request_iterator)
        try:
            return await self._upload(messages)
        finally:
            await _drain(messages)

    async def _upload(
        self, messages: AsyncIterator[dataset_service_pb2.UploadDatasetRequest]
    ) -> dataset_pb2.Dataset:
        header = await self._read_header(messages)
        display_name = validate_display_name(header.display_name)
        fmt = CsvFormat(
            delimiter=validate_delimiter(header.delimiter),
            has_header=header.has_header if header.HasField("has_header") else True,
        )
        request_id = validate_request_id(header.request_id)
        if request_id and (earlier := await self._replay(request_id)) is not None:
            return earlier
        async with self._upload_slots:
            record = DatasetRecord(
                dataset_id=uuid.uuid4().hex,
                display_name=display_name,
                request_id=request_id,
                delimiter=fmt.delimiter,
                has_header=fmt.has_header,
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
                return await self._ingest(record.dataset_id, fmt, self._chunks(messages))

    async def _read_header(
        self, messages: AsyncIterator[dataset_service_pb2.UploadDatasetRequest]
    ) -> dataset_service_pb2.UploadDatasetHeader:
        first = await anext(messages, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise invalid_argument(
                reasons.HEADER_MISSING,
                "the first message of an upload must be its header (display_name, CSV options)",
            )
        return first.header

    async def _chunks(
        self, messages: AsyncIterator[dataset_service_pb2.UploadDatasetRequest]
    ) -> AsyncIterator[bytes]:
        async for message in messages:
            if message.WhichOneof("payload") == "header":
                raise invalid_argument(
                    reasons.HEADER_REPEATED,
                    "an upload has exactly one header, in its first message",
                )
            yield message.chunk

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
        self, dataset_id: str, fmt: CsvFormat, chunks: AsyncIterator[bytes]
    ) -> dataset_pb2.Dataset:
        settings = self._settings
        ingest = Ingest(
            self._store,
            self._cache,
            dataset_id,
            fmt,
            self._limits,
            self._profile_options,
            settings.max_upload_bytes,
        )
        started = time.perf_counter()
        self.active_uploads.add(dataset_id)
        try:
            await ingest.receive(chunks)
            received = time.perf_counter()
            size_bytes, sha256 = await ingest.wait_stored()
            stored = time.perf_counter()
            await self._repository.mark_processing(dataset_id, size_bytes, sha256)
            result = await ingest.wait_converted()
            await self._mark_ready(dataset_id, result)
        except asyncio.CancelledError:
            self._give_up(ingest, dataset_id, _upload_aborted())
            raise
        except Exception as error:
            failure = _as_service_error(error)
            await asyncio.shield(self._give_up(ingest, dataset_id, failure))
            raise ServiceError(
                failure.code,
                failure.reason,
                _limited(failure.message),
                {**failure.metadata, "dataset_id": dataset_id},
            ) from None
        finally:
            self.active_uploads.discard(dataset_id)
        metrics.INGESTED_BYTES.inc(result.size_bytes)
        metrics.INGEST_SECONDS.observe(time.perf_counter() - started)
        metrics.UPLOADS.labels("READY").inc()
        logger.info(
            "dataset ready",
            extra={
                "rows": result.conversion.row_count,
                "columns": len(result.conversion.columns),
                "size_bytes": result.size_bytes,
                "encoding": result.encoding,
                "seconds": round(time.perf_counter() - started, 3),
                "receive_seconds": round(received - started, 3),
                "store_seconds": round(stored - received, 3),
                "convert_seconds": round(time.perf_counter() - stored, 3),
            },
        )
        record = await self._repository.get(dataset_id)
        assert record is not None
        return to_message(record)

    async def _mark_ready(self, dataset_id: str, result: IngestResult) -> None:
        columns = dataset_pb2.Dataset(columns=result.conversion.columns).SerializeToString()
        if not await self._repository.mark_ready(dataset_id, columns, result.conversion.row_count):
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
                dataset_id, failure.code.value[0], failure.reason, _limited(failure.message)
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
            raise not_found(
                reasons.DATASET_NOT_FOUND, f"no dataset {dataset_id!r}", dataset_id=dataset_id
            )
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

    async def GetDataset(
        self,
        request: dataset_service_pb2.GetDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dataset_pb2.Dataset:
        return to_message(await self._record(request.dataset_id))

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
        records = await self._repository.list_page(page, filters)
        response = dataset_service_pb2.ListDatasetsResponse(
            datasets=[to_message(record) for record in records[: page.size]]
        )
        if len(records) > page.size:
            last = records[page.size - 1]
            response.next_page_token = next_page_token(
                (as_utc(last.create_time).isoformat(), last.dataset_id), filters.as_dict()
            )
        return response

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
        try:
            await asyncio.to_thread(self._store.delete_prefix, dataset_prefix(record.dataset_id))
            if self._cache is not None:
                await asyncio.to_thread(self._cache.discard, record.dataset_id)
        except (BotoCoreError, ClientError, OSError) as error:
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
        record = await self._ready_record(request.dataset_id)
        chunks = read_chunks(self._store, original_key(record.dataset_id), DOWNLOAD_CHUNK_BYTES)
        async for chunk in self._blob_stream(iterate_in_thread(chunks, "download")):
            yield httpbody_pb2.HttpBody(content_type="text/csv", data=chunk)

    async def ReadDataset(  # type: ignore[override]  # yields pre-serialized responses
        self,
        request: dataset_service_pb2.ReadDatasetRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        """Yields serialized ReadDatasetResponses (registered with a pass-through serializer)."""
        record = await self._ready_record(request.dataset_id)
        columns = self._projection(record, list(request.columns))
        if request.batch_rows < 0 or request.batch_rows > MAX_BATCH_ROWS:
            raise invalid_argument(
                reasons.BATCH_ROWS_INVALID, f"batch_rows must be between 0 and {MAX_BATCH_ROWS}"
            )
        started = time.perf_counter()
        try:
            stream = await asyncio.to_thread(
                ArrowStream,
                await asyncio.to_thread(self._open_parquet, record.dataset_id),
                columns,
                request.batch_rows or DEFAULT_BATCH_ROWS,
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

    def _open_parquet(self, dataset_id: str) -> BinaryIO:
        key = parquet_key(dataset_id)
        if self._cache is not None:
            return self._cache.open(self._store, key, dataset_id)
        return self._store.open_random_access(key)

    @staticmethod
    def _projection(record: DatasetRecord, requested: list[str]) -> list[str]:
        names = [column.name for column in to_message(record).columns]
        known = set(names)
        for name in requested:
            if name not in known:
                raise invalid_argument(
                    reasons.COLUMN_NOT_FOUND,
                    f"dataset {record.dataset_id!r} has no column {name!r}",
                    column=name,
                )
        if len(set(requested)) != len(requested):
            raise invalid_argument(reasons.COLUMN_REPEATED, "a column is requested twice")
        return requested or names

    @staticmethod
    async def _blob_stream(items: AsyncIterator[T]) -> AsyncIterator[T]:
        try:
            async for item in items:
                yield item
        except (BotoCoreError, ClientError, OSError, BlobNotFoundError) as error:
            raise _blob_store_error(error) from error
