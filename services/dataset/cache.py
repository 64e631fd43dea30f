"""A local copy of recently written or read Parquet files, for ReadDataset.

With the S3 blob store, reading a dataset means fetching its Parquet copy
first. The copy written at ingest is kept here as well, and a read that
misses fills the cache, so the Trainer reading a dataset (again, on a retry)
starts at once. Datasets never change once READY, so a cached file is never
stale; deleted datasets are refused before the cache is looked at.

Files are written to a temporary name and renamed into place, so processes
sharing the folder never see half a file; the least recently used files go
when the cache passes its size.

A copy is not flushed to disk before it is renamed into place: that wait was
about 25 ms on the way to READY for a 95 MB upload. Only a machine that stops
(a power loss, a kernel crash) can lose what the kernel had not written yet,
and such a machine starts again: files older than its start are removed when
the cache is opened, before anything reads them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from services.dataset.blobstore import BlobStore, BlobWriter, LocalBlobWriter

logger = logging.getLogger("modelyard.dataset.cache")

COPY_CHUNK_BYTES = 8 * 1024 * 1024


def machine_started_at() -> float | None:
    """When the machine last started, in seconds since the epoch (None when the system
    has no clock that counts from there)."""
    boot_clock = getattr(time, "CLOCK_BOOTTIME", None)
    if boot_clock is None:
        return None
    return time.time() - time.clock_gettime(boot_clock)


class ParquetCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        started = machine_started_at()
        # Without a start time to compare with, every copy is flushed to disk instead.
        self._durable = started is None
        if started is not None:
            self._remove_files_older_than(started)

    def _remove_files_older_than(self, started: float) -> None:
        """Drop what was written before the machine started: it may be incomplete."""
        removed = 0
        for path in [*self.root.glob("*.parquet"), *self.root.glob(".*.partial")]:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < started:
                    path.unlink()
                    removed += 1
        if removed:
            logger.info(
                "read cache: removed the files written before the machine started",
                extra={"files": removed},
            )

    def _path(self, dataset_id: str) -> Path:
        return self.root / f"{dataset_id}.parquet"

    def writer(self, dataset_id: str) -> BlobWriter:
        return LocalBlobWriter(self._path(dataset_id), durable=self._durable)

    def caching(self, blob: BlobWriter, dataset_id: str) -> BlobWriter:
        """`blob`, with a copy of what is written kept here."""
        return CachingWriter(blob, self.writer(dataset_id), after_commit=self.evict)

    def open(self, store: BlobStore, key: str, dataset_id: str) -> BinaryIO:
        """The cached copy, fetched from the store first when missing."""
        path = self._path(dataset_id)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            self._fill(store, key, dataset_id)
            handle = path.open("rb")
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return handle

    def _fill(self, store: BlobStore, key: str, dataset_id: str) -> None:
        writer = self.writer(dataset_id)
        try:
            with contextlib.closing(store.open_reader(key)) as source:
                while chunk := source.read(COPY_CHUNK_BYTES):
                    writer.write(chunk)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.evict()

    def adopt(self, path: Path, dataset_id: str) -> None:
        """Take the local file at `path` as the dataset's cached copy (best effort)."""
        try:
            shutil.move(path, self._path(dataset_id))
            self.evict()
        except OSError:
            logger.warning("could not keep a local copy of a Parquet file", exc_info=True)

    def discard(self, dataset_id: str) -> None:
        self._path(dataset_id).unlink(missing_ok=True)

    def evict(self) -> None:
        """Remove the least recently used files until the cache fits its size."""
        files: list[tuple[float, int, Path]] = []
        for path in self.root.glob("*.parquet"):
            with contextlib.suppress(FileNotFoundError):
                status = path.stat()
                files.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)  # a reader holding it open keeps reading
            total -= size


class CachingWriter(io.RawIOBase):
    """Writes a blob and, best effort, its cached copy: a cache problem never fails a write."""

    def __init__(
        self, blob: BlobWriter, copy: BlobWriter, after_commit: Callable[[], None]
    ) -> None:
        super().__init__()
        self._blob = blob
        self._copy: BlobWriter | None = copy
        self._after_commit = after_commit

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = self._blob.write(data)
        if self._copy is not None:
            try:
                self._copy.write(data)
            except OSError:
                self._drop_copy()
        return written

    def tell(self) -> int:
        return self._blob.tell()

    def finish(self) -> None:
        self._blob.finish()
        if self._copy is not None:
            try:
                self._copy.finish()
            except OSError:
                self._drop_copy()

    def commit(self) -> None:
        self._blob.commit()
        if self._copy is not None:
            try:
                self._copy.commit()
                self._after_commit()
            except OSError:
                self._drop_copy()

    def abort(self) -> None:
        try:
            self._blob.abort()
        finally:
            if self._copy is not None:
                self._discard_copy()

    def _drop_copy(self) -> None:
        """The local copy failed (disk full, say): go on without it, and say so."""
        logger.warning("could not keep a local copy of a Parquet file", exc_info=True)
        self._discard_copy()

    def _discard_copy(self) -> None:
        assert self._copy is not None
        with contextlib.suppress(OSError):
            self._copy.abort()
        self._copy = None
