"""The read cache's local copies: not flushed to disk one by one, and dropped when the
machine they were written on has started again since (they may be incomplete)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.dataset import cache as cache_module
from services.dataset.cache import ParquetCache, machine_started_at

MiB = 1024 * 1024


def test_the_machine_started_before_now_and_after_the_epoch() -> None:
    started = machine_started_at()
    assert started is not None  # Linux has CLOCK_BOOTTIME
    assert 0 < started < time.time()


def aged(path: Path, data: bytes, seconds_before: float, reference: float) -> Path:
    path.write_bytes(data)
    os.utime(path, (reference - seconds_before, reference - seconds_before))
    return path


def test_copies_written_before_the_machine_started_are_removed_when_the_cache_opens(
    tmp_path: Path,
) -> None:
    started = machine_started_at()
    assert started is not None
    root = tmp_path / "parquet-cache"
    root.mkdir()
    before = aged(root / "old.parquet", b"PAR1 cut short", 60, started)
    partial = aged(root / ".old.parquet.abc.partial", b"PAR1", 60, started)
    after = aged(root / "new.parquet", b"PAR1 whole PAR1", -60, started)
    ParquetCache(root, max_bytes=MiB)
    assert not before.exists()
    assert not partial.exists()
    assert after.read_bytes() == b"PAR1 whole PAR1"


def test_a_copy_is_renamed_into_place_without_waiting_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[int] = []
    monkeypatch.setattr(os, "fsync", flushed.append)
    cache = ParquetCache(tmp_path / "parquet-cache", max_bytes=MiB)
    writer = cache.writer("d1")
    writer.write(b"PAR1 data PAR1")
    writer.commit()
    assert (tmp_path / "parquet-cache" / "d1.parquet").read_bytes() == b"PAR1 data PAR1"
    assert flushed == []


def test_without_a_start_time_every_copy_is_flushed_to_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[int] = []
    monkeypatch.setattr(os, "fsync", flushed.append)
    monkeypatch.setattr(cache_module, "machine_started_at", lambda: None)
    root = tmp_path / "parquet-cache"
    root.mkdir()
    kept = aged(root / "old.parquet", b"PAR1", 10**6, time.time())
    cache = ParquetCache(root, max_bytes=MiB)
    writer = cache.writer("d1")
    writer.write(b"PAR1 data PAR1")
    writer.commit()
    assert len(flushed) == 1
    assert kept.exists()  # nothing to compare its age with
