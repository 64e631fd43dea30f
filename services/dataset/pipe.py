"""Hand-off of byte chunks between the event loop and the ingest threads.

A `Pipe` is a bounded queue that can be finished (readers see end of file once
it is drained) or aborted (everyone blocked on it wakes up at once). The
bound is what keeps an upload's memory flat: a fast client waits for a slow
parser instead of piling chunks up.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from typing import Any


class PipeAbortedError(Exception):
    """The pipe was aborted: the upload failed or was cancelled."""


class Pipe:
    def __init__(self, max_items: int) -> None:
        self._items: deque[bytes] = deque()
        self._max_items = max_items
        self._condition = threading.Condition()
        self._finished = False
        self._aborted = False
        self._reader_gone = False

    def put(self, data: bytes) -> None:
        """Block while the pipe is full; drop the data when nobody reads any more."""
        with self._condition:
            while len(self._items) >= self._max_items and not self._stopped():
                self._condition.wait()
            if self._aborted:
                raise PipeAbortedError
            if self._reader_gone:
                return
            self._items.append(data)
            self._condition.notify_all()

    def try_put(self, data: bytes) -> bool:
        """Put without blocking; False when the pipe is full."""
        with self._condition:
            if self._aborted:
                raise PipeAbortedError
            if self._reader_gone:
                return True
            if len(self._items) >= self._max_items:
                return False
            self._items.append(data)
            self._condition.notify_all()
            return True

    def get(self) -> bytes | None:
        """The next chunk, or None at the end of the stream."""
        with self._condition:
            while not self._items and not self._finished and not self._aborted:
                self._condition.wait()
            if self._aborted:
                raise PipeAbortedError
            if not self._items:
                return None
            data = self._items.popleft()
            self._condition.notify_all()
            return data

    def finish(self) -> None:
        with self._condition:
            self._finished = True
            self._condition.notify_all()

    def abort(self) -> None:
        with self._condition:
            self._aborted = True
            self._items.clear()
            self._condition.notify_all()

    def close_reader(self) -> None:
        """The reader stopped early: writers no longer wait for it."""
        with self._condition:
            self._reader_gone = True
            self._items.clear()
            self._condition.notify_all()

    def _stopped(self) -> bool:
        return self._aborted or self._reader_gone


class RecordingReader(io.RawIOBase):
    """A file-like reader over chunks that remembers the last bytes it returned.

    `recent()` lets an error about an over-long row look at the text that
    caused it. `next_chunk` returns b"" at the end of the stream.

    pyarrow reads on a thread of its own while the conversion's thread may call
    `recent()`, so what is remembered changes under a lock.
    """

    def __init__(self, next_chunk: Any, keep_bytes: int) -> None:
        super().__init__()
        self._next_chunk = next_chunk
        self._chunk = b""
        self._offset = 0
        self._recent: deque[bytes] = deque()
        self._recent_lock = threading.Lock()
        self._recent_bytes = 0
        self._keep_bytes = keep_bytes
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        wanted = size if size is not None and size >= 0 else 1 << 62
        parts: list[bytes] = []
        count = 0
        while count < wanted and not self._fill():
            available = len(self._chunk) - self._offset
            if self._offset == 0 and available <= wanted - count:
                part = self._chunk  # the common case: a whole chunk, no copy
            else:
                part = self._chunk[self._offset : self._offset + wanted - count]
            self._offset += len(part)
            parts.append(part)
            count += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._remember(data)
        return data

    def peek_chunk(self) -> bytes:
        """The bytes the next read starts with (at most one chunk), without consuming them."""
        self._fill()
        return self._chunk[self._offset :]

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def _fill(self) -> bool:
        """Make bytes pending; True at the end of the stream."""
        while self._offset >= len(self._chunk) and not self._eof:
            chunk = self._next_chunk()
            if not chunk:
                self._eof = True
            else:
                self._chunk, self._offset = bytes(chunk), 0
        return self._offset >= len(self._chunk)

    def _remember(self, data: bytes) -> None:
        if not data:
            return
        with self._recent_lock:
            self._recent.append(data)
            self._recent_bytes += len(data)
            while (
                len(self._recent) > 1
                and self._recent_bytes - len(self._recent[0]) >= self._keep_bytes
            ):
                self._recent_bytes -= len(self._recent.popleft())

    def recent(self) -> bytes:
        with self._recent_lock:
            return b"".join(self._recent)


def pipe_reader(pipe: Pipe, keep_bytes: int) -> RecordingReader:
    return RecordingReader(lambda: pipe.get() or b"", keep_bytes)


def stream_reader(stream: Any, keep_bytes: int, chunk_bytes: int = 1 << 20) -> RecordingReader:
    return RecordingReader(lambda: stream.read(chunk_bytes), keep_bytes)
