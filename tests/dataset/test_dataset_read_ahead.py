"""The CSV reader of a conversion holds a few blocks of text, whatever the file's size.

pyarrow's streaming CSV reader queues up to 32 blocks read ahead on a thread of its
own; the conversion bounds that to READ_AHEAD_BLOCKS beyond the batch being taken.
"""

from __future__ import annotations

import threading
import time

from services.dataset.convert import READ_AHEAD_BLOCKS, CsvBatches, CsvFormat, Limits
from services.dataset.pipe import RecordingReader
from tests.dataset.dataset_support import recording_reader

MiB = 1024 * 1024
LIMITS = Limits(max_columns=10, max_field_bytes=MiB, max_row_bytes=MiB, max_column_name_chars=100)


class CountingText:
    """A text of `rows` rows, handed out in chunks of 256 KiB, counting what was read."""

    def __init__(self, rows: int) -> None:
        lines = (f"{index},{index * 0.5},name-{index % 97}\n".encode() for index in range(rows))
        self.data = b"id,score,name\n" + b"".join(lines)
        self.read_bytes = 0
        self._lock = threading.Lock()

    def source(self) -> RecordingReader:
        def next_chunk() -> bytes:
            with self._lock:
                chunk = self.data[self.read_bytes : self.read_bytes + 256 * 1024]
                self.read_bytes += len(chunk)
            return chunk

        return RecordingReader(next_chunk, keep_bytes=2 * MiB)


def test_reader_stays_a_few_blocks_ahead_of_the_batches_taken() -> None:
    text = CountingText(rows=1_200_000)  # about 30 MiB: 30 blocks of 1 MiB
    assert len(text.data) > 24 * MiB
    with CsvBatches(text.source(), CsvFormat(), LIMITS) as batches:
        batch_iterator = iter(batches)
        rows = next(batch_iterator).num_rows
        time.sleep(0.5)  # room for the reader's own thread to read as far as it may
        # pyarrow alone reads 32 blocks ahead: all of this text.
        assert text.read_bytes <= (READ_AHEAD_BLOCKS + 2) * MiB <= 8 * MiB
        rows += sum(batch.num_rows for batch in batch_iterator)
    assert rows == 1_200_000
    assert text.read_bytes == len(text.data)


def test_closing_early_releases_a_reader_waiting_for_room() -> None:
    text = CountingText(rows=1_200_000)
    started = time.monotonic()
    with CsvBatches(text.source(), CsvFormat(), LIMITS) as batches:
        next(iter(batches))
        time.sleep(0.2)
    assert time.monotonic() - started < 5
    assert text.read_bytes < len(text.data)


def test_a_reader_that_fails_while_opening_does_not_wait_for_its_read_ahead() -> None:
    """The first row is longer than the reader's blocks: opening fails while the read-ahead
    thread may already wait for room. pyarrow waits for that thread's read before
    `open_csv` raises, so that read must not wait for a batch nobody will take."""
    names = ",".join(f"c{index}" for index in range(500))
    values = ",".join("v" * 8000 for _ in range(500))  # one row of 4 MB, blocks of 1 MiB
    data = f"{names}\n{values}\n".encode()
    limits = Limits(
        max_columns=1000, max_field_bytes=MiB, max_row_bytes=MiB, max_column_name_chars=100
    )
    for _ in range(5):  # the wait is a race (nearly always lost with text in memory)
        errors: list[Exception] = []
        converting = threading.Thread(
            target=convert_collecting_errors,
            args=(recording_reader(data, 256 * 1024, 2 * MiB), limits, errors),
            daemon=True,
        )
        converting.start()
        converting.join(timeout=20)
        assert not converting.is_alive(), "the conversion waits for its own read-ahead"
        assert [getattr(error, "reason", None) for error in errors] == ["ROW_TOO_LARGE"]


def convert_collecting_errors(
    source: RecordingReader, limits: Limits, errors: list[Exception]
) -> None:
    try:
        with CsvBatches(source, CsvFormat(), limits) as batches:
            list(batches)
    except Exception as error:
        errors.append(error)
