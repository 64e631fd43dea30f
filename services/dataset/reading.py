"""Serving stored datasets: the Parquet copy as Arrow IPC or as CSV, stored files as bytes.

All are synchronous iterators meant to be advanced in a worker thread, one
message at a time, so a reader's memory is one row group, not the dataset.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from modelyard.dataset.v1 import dataset_service_pb2
from runtime.wire import field_head
from services.dataset.blobstore import BlobStore
from services.dataset.content import Compression, decompressed


class ArrowStream:
    """One Arrow IPC stream over a Parquet blob: the schema message, then record batches.

    A record batch whose message would exceed `max_message_bytes` is split
    into row ranges, so every gRPC response stays well under the limit.
    """

    def __init__(
        self,
        source: BinaryIO,
        columns: Sequence[str],
        batch_rows: int,
        max_message_bytes: int,
    ) -> None:
        self._file = source
        try:
            self._parquet = pq.ParquetFile(self._file)  # a local file: read on demand
        except BaseException:
            self._file.close()
            raise
        stored = self._parquet.schema_arrow
        self._names = list(columns) or list(stored.names)
        self.schema = pa.schema([stored.field(name) for name in self._names])
        self._max_message_bytes = max_message_bytes
        self._batch_rows = min(batch_rows, self._rows_per_message())

    def _rows_per_message(self) -> int:
        """Rows that fit in one message, from the Parquet copy's uncompressed column sizes."""
        metadata = self._parquet.metadata
        wanted = set(self._names)
        rows, size = 0, 0
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            rows += row_group.num_rows
            for index in range(row_group.num_columns):
                chunk = row_group.column(index)
                if chunk.path_in_schema in wanted:
                    size += chunk.total_uncompressed_size
        if rows == 0 or size == 0:
            return 1 << 30
        # Arrow takes about as many bytes as uncompressed Parquet; keep a margin.
        return max(1, int(0.75 * self._max_message_bytes * rows / size))

    def messages(self) -> Iterator[bytes]:
        """Encoded `ReadDatasetResponse`s, ready for the wire (see `encoded_response`)."""
        yield encoded_response(self.schema.serialize())
        # Row group by row group: ParquetFile.iter_batches reads ahead without
        # bound (its memory grows to the whole file), this stays at one group.
        for group in range(self._parquet.num_row_groups):
            table = self._parquet.read_row_group(group, columns=self._names, use_threads=True)
            for batch in table.select(self._names).to_batches(max_chunksize=self._batch_rows):
                yield from self._serialized(batch)

    def _serialized(self, batch: pa.RecordBatch) -> Iterator[bytes]:
        message = batch.serialize()
        if message.size <= self._max_message_bytes or batch.num_rows <= 1:
            yield encoded_response(message)
            return
        half = batch.num_rows // 2
        yield from self._serialized(batch.slice(0, half))
        yield from self._serialized(batch.slice(half))

    def close(self) -> None:
        self._file.close()


_ARROW_IPC_FIELD = dataset_service_pb2.ReadDatasetResponse.DESCRIPTOR.fields_by_name["arrow_ipc"]


def encoded_response(ipc: pa.Buffer) -> bytes:
    """A serialized `ReadDatasetResponse` holding `ipc`, built with one copy (see
    runtime.wire; the call's serializer lets it through)."""
    return b"".join((field_head(_ARROW_IPC_FIELD.number, ipc.size), memoryview(ipc)))


def read_chunks(
    store: BlobStore, key: str, chunk_bytes: int, decompress: bool = False
) -> Iterator[bytes]:
    """The blob's bytes, in chunks; decompressed (zstd) when it is kept compressed."""
    stream = store.open_reader(key)
    try:
        source = decompressed(stream, Compression.COMPRESSION_ZSTD) if decompress else stream
        while chunk := source.read(chunk_bytes):
            yield chunk
    finally:
        stream.close()


# Rows converted and written as CSV at a time, within one row group.
CSV_BATCH_ROWS = 16_384


def csv_chunks(open_source: Callable[[], BinaryIO], chunk_bytes: int) -> Iterator[bytes]:
    """The Parquet copy's rows as CSV text (header once), in chunks of `chunk_bytes`.

    Row group by row group, like `ArrowStream`: memory stays at one row group
    plus one chunk whatever the dataset's size. Dates and timestamps become
    ISO 8601 text (pyarrow would write a space between date and time).
    """
    source = open_source()
    try:
        parquet = pq.ParquetFile(source)
        stored = parquet.schema_arrow
        sink = io.BytesIO()
        writer = pa_csv.CSVWriter(sink, _csv_schema(stored))
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, use_threads=True)
            for batch in table.to_batches(max_chunksize=CSV_BATCH_ROWS):
                writer.write_batch(_csv_batch(batch))
                yield from _full_chunks(sink, chunk_bytes)
        writer.close()  # an empty dataset still gets its header line
        yield from _full_chunks(sink, chunk_bytes)
        if rest := sink.getvalue():
            yield rest
    finally:
        source.close()


def _full_chunks(sink: io.BytesIO, chunk_bytes: int) -> Iterator[bytes]:
    """Takes every whole chunk out of `sink`, keeping the remainder in it."""
    if sink.tell() < chunk_bytes:
        return
    data = sink.getbuffer()
    whole = len(data) - len(data) % chunk_bytes
    for start in range(0, whole, chunk_bytes):
        yield bytes(data[start : start + chunk_bytes])
    rest = bytes(data[whole:])
    data.release()
    sink.seek(0)
    sink.truncate()
    sink.write(rest)


def _csv_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [
            pa.field(field.name, pa.string()) if pa.types.is_timestamp(field.type) else field
            for field in schema
        ]
    )


def _csv_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    columns = [
        _iso_timestamps(column) if pa.types.is_timestamp(column.type) else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _iso_timestamps(column: pa.Array) -> pa.Array:
    """`2024-01-02T03:04:05.000000`, with a `Z` when the column is in UTC."""
    if column.type.tz is None:
        return pc.strftime(column, format="%Y-%m-%dT%H:%M:%S")
    in_utc = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
    return pc.strftime(in_utc, format="%Y-%m-%dT%H:%M:%SZ")
