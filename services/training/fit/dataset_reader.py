"""Reading a dataset from DatasetService: its schema (GetDataset) and its rows
(ReadDataset, an Arrow IPC stream split over the responses) into pandas.

The stream is decoded in a worker thread while it arrives, and every record
batch is converted and let go as soon as it is decoded (`FrameBuilder`): memory
holds the values once, in their compact form (numbers as float64, text as
dictionary codes that become pandas `category` columns, what LightGBM's native
categorical splits need), never the raw bytes, a whole Arrow table and a
pandas copy of it at once. Rows without a target are dropped as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import queue
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pandas as pd
import pyarrow as pa

from modelyard.dataset.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc
from runtime.errors import error_reason
from runtime.limits import echo
from services.training import reasons
from services.training.fit.frame_builder import FrameBuilder
from services.training.model.columns import ColumnInfo, ColumnType
from services.training.model.pyfunc_model import ISO_8601
from services.training.model.targets import TrainingFailure

# Columns the pipeline never uses as features: not worth streaming.
NOT_READ = (ColumnType.ALL_NULL,)
_QUEUED_CHUNKS = 8
PARQUET_ACCESS_TIMEOUT_SECONDS = 300.0
_BATCH_ROWS = 65_536
_TRANSIENT_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
)


class DatasetUnavailable(Exception):
    """DatasetService could not be reached or failed; the job can be tried again."""


@dataclass
class LoadedDataset:
    dataset: dataset_pb2.Dataset
    columns: list[ColumnInfo]
    frame: pd.DataFrame | None
    # Rows left out while reading because their target is missing or blank.
    rows_dropped_missing_target: int = 0

    def take_frame(self) -> pd.DataFrame:
        """The rows, handed over: this object no longer keeps them alive."""
        frame, self.frame = self.frame, None
        if frame is None:
            raise RuntimeError("the dataset's rows were already taken")
        return frame


def column_infos(dataset: dataset_pb2.Dataset) -> list[ColumnInfo]:
    return [
        ColumnInfo(
            name=column.name,
            type=ColumnType(dataset_pb2.Column.DataType.Name(column.data_type))
            if column.data_type
            else ColumnType.STRING,
            id_like=column.id_like,
            row_number=column.row_number,
            date_format=column.profile.date_format or ISO_8601,
        )
        for column in dataset.columns
    ]


class DatasetReader:
    def __init__(self, channel: grpc.aio.Channel, rpc_timeout: float) -> None:
        self._stub = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        self._timeout = rpc_timeout

    async def get(self, dataset_id: str) -> dataset_pb2.Dataset:
        try:
            dataset: dataset_pb2.Dataset = await self._stub.GetDataset(
                dataset_service_pb2.GetDatasetRequest(dataset_id=dataset_id),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise _failure(error, dataset_id) from error
        if dataset.state != dataset_pb2.Dataset.State.READY:
            state = dataset_pb2.Dataset.State.Name(dataset.state)
            raise TrainingFailure(
                reasons.DATASET_NOT_READY,
                f"dataset {dataset_id} is {state}, not READY",
                metadata={"dataset_id": dataset_id, "state": state},
            )
        return dataset

    async def read(self, dataset: dataset_pb2.Dataset, target: str) -> LoadedDataset:
        """Every column the pipeline may use, as a DataFrame."""
        columns = column_infos(dataset)
        if target not in {column.name for column in columns}:
            raise TrainingFailure(
                reasons.TARGET_COLUMN_NOT_FOUND,
                f"dataset {dataset.dataset_id} has no column {target!r}",
                invalid_argument=True,
                metadata={"dataset_id": dataset.dataset_id, "column": echo(target)},
            )
        wanted = [
            c.name
            for c in columns
            if (c.type not in NOT_READ and not c.row_number) or c.name == target
        ]
        request = dataset_service_pb2.ReadDatasetRequest(
            dataset_id=dataset.dataset_id, columns=wanted, batch_rows=_BATCH_ROWS
        )
        builders: list[FrameBuilder] = []

        def on_schema(schema: pa.Schema) -> Callable[[pa.RecordBatch], None]:
            if target not in schema.names:
                raise TrainingFailure(
                    reasons.DATASET_READ_FAILED,
                    f"the dataset stream has no column {echo(target)!r}",
                )
            builders.append(FrameBuilder(schema, target, dataset.row_count))
            return builders[0].add

        try:
            await decode_batches(self._chunks(request), on_schema)
        except grpc.aio.AioRpcError as error:
            raise _failure(error, dataset.dataset_id) from error
        builder = builders[0]
        frame = await asyncio.to_thread(builder.finish)
        return LoadedDataset(
            dataset=dataset,
            columns=columns,
            frame=frame,
            rows_dropped_missing_target=builder.rows_dropped_missing_target,
        )

    async def parquet_access(
        self, dataset: dataset_pb2.Dataset
    ) -> dataset_service_pb2.GetParquetAccessResponse:
        """The read-only URL of the dataset's Parquet copy, for Dask workers."""
        try:
            access: dataset_service_pb2.GetParquetAccessResponse = (
                await self._stub.GetParquetAccess(
                    dataset_service_pb2.GetParquetAccessRequest(dataset_id=dataset.dataset_id),
                    # The first call joins a large copy into one object on S3 (seconds).
                    timeout=max(self._timeout, PARQUET_ACCESS_TIMEOUT_SECONDS),
                )
            )
        except grpc.aio.AioRpcError as error:
            raise _failure(error, dataset.dataset_id) from error
        return access

    async def stream(
        self,
        dataset_id: str,
        columns: list[str],
        on_schema: Callable[[pa.Schema], Callable[[pa.RecordBatch], None]],
        batch_rows: int = _BATCH_ROWS,
    ) -> None:
        """Hand each record batch of the dataset's columns over as it is decoded (in a
        thread: see `decode_batches`); the stream is cancelled as soon as decoding stops."""
        request = dataset_service_pb2.ReadDatasetRequest(
            dataset_id=dataset_id, columns=columns, batch_rows=batch_rows
        )
        call = self._stub.ReadDataset(request)

        async def chunks() -> AsyncIterator[bytes]:
            async for response in call:
                yield response.arrow_ipc

        try:
            await decode_batches(chunks(), on_schema)
        except grpc.aio.AioRpcError as error:
            raise _failure(error, dataset_id) from error
        finally:
            call.cancel()

    async def _chunks(
        self, request: dataset_service_pb2.ReadDatasetRequest
    ) -> AsyncIterator[bytes]:
        stream = self._stub.ReadDataset(request)
        async for response in stream:
            yield response.arrow_ipc


def _failure(error: grpc.aio.AioRpcError, dataset_id: str) -> Exception:
    code = error.code()
    about = {"dataset_id": dataset_id}
    if code == grpc.StatusCode.NOT_FOUND:
        return TrainingFailure(
            reasons.DATASET_NOT_FOUND,
            f"dataset {dataset_id} does not exist",
            code="NOT_FOUND",
            metadata=about,
        )
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        reason = error_reason(error) or reasons.DATASET_NOT_READY
        return TrainingFailure(reason, f"dataset {dataset_id}: {error.details()}", metadata=about)
    if code in _TRANSIENT_CODES:
        return DatasetUnavailable(f"DatasetService: {code.name}: {error.details()}")
    return TrainingFailure(
        error_reason(error) or reasons.DATASET_READ_FAILED,
        f"reading dataset {dataset_id} failed: {code.name}: {error.details()}",
        metadata=about,
    )


class _QueueReader(io.RawIOBase):
    """A blocking file over byte chunks put in a queue (None ends it)."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        super().__init__()
        self._chunks = chunks
        self._current = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` completely unless the stream ends: Arrow takes a short read for EOF."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if not self._current:
                chunk = None if self._ended else self._chunks.get()
                if chunk is None:
                    self._ended = True
                    break
                self._current = memoryview(chunk)
            size = min(len(view) - filled, len(self._current))
            view[filled : filled + size] = self._current[:size]
            self._current = self._current[size:]
            filled += size
        return filled


async def decode_stream(chunks: AsyncIterator[bytes]) -> pa.Table:
    """An Arrow table from IPC stream bytes (tests and tools; the Trainer converts batches)."""
    batches: list[pa.RecordBatch] = []
    schemas: list[pa.Schema] = []

    def on_schema(schema: pa.Schema) -> Callable[[pa.RecordBatch], None]:
        schemas.append(schema)
        return batches.append

    await decode_batches(chunks, on_schema)
    return pa.Table.from_batches(batches, schema=schemas[0])


async def decode_batches(
    chunks: AsyncIterator[bytes],
    on_schema: Callable[[pa.Schema], Callable[[pa.RecordBatch], None]],
) -> None:
    """Decode IPC stream bytes in a thread as they arrive, handing over each record batch.

    `on_schema` gets the stream's schema and returns what takes each batch; both
    run in the decoding thread, so a slow consumer slows the stream (the queue
    is bounded), never grows memory.
    """
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
    reader = _QueueReader(pending)

    def decode() -> None:
        with pa.ipc.open_stream(pa.PythonFile(reader, mode="r")) as stream:
            consume = on_schema(stream.schema)
            for batch in stream:
                consume(batch)

    decoding = asyncio.ensure_future(asyncio.to_thread(decode))
    try:
        async for chunk in chunks:
            await _put(pending, chunk, decoding)
            if decoding.done():
                break  # the decoder stopped early (an error, a stop): read no further
    except BaseException:
        await _put(pending, None, decoding)
        with contextlib.suppress(Exception):
            await decoding
        raise
    await _put(pending, None, decoding)
    try:
        await decoding
    except (pa.ArrowInvalid, OSError) as error:
        raise TrainingFailure(
            reasons.DATASET_READ_FAILED, f"the dataset stream is invalid: {error}"
        ) from error


async def _put(
    pending: queue.Queue[bytes | None], chunk: bytes | None, decoding: asyncio.Future[Any]
) -> None:
    while True:
        if decoding.done():
            return  # the decoder stopped (error or end): nothing reads the queue any more
        with contextlib.suppress(queue.Full):
            pending.put_nowait(chunk)
            return
        await asyncio.sleep(0.005)


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Text as `category` (from Arrow dictionaries); numbers as float64 or int64."""
    columns: dict[str, Any] = {}
    for index, name in enumerate(table.column_names):
        array = table.column(index)
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            array = array.dictionary_encode()
        columns[name] = array.to_pandas(date_as_object=False)  # dates as datetime64
    return pd.DataFrame(columns, copy=False)
