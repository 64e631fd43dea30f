"""What runs on the Dask workers: reading Parquet row groups from a URL, summarising
them, turning them into features, and the LightGBM callback of a distributed job.

Workers hold no credential of any kind. They read the dataset's Parquet copy
through the URL the Dataset service gave out (`GetParquetAccess`): a presigned
GET URL (byte ranges: only the footer and the wanted column chunks are fetched)
or a `file://` URL on a shared filesystem. One row group is one partition.

The features are made by the model's own preprocessing
(`pyfunc_model.coerce_features`), with the levels of the job's spec, so every
worker's `category` columns have the same codes, the ones Predict uses.
"""

from __future__ import annotations

import io
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from services.training.fit.frame_builder import FrameBuilder
from services.training.model import pyfunc_model
from services.training.model.pyfunc_model import FeatureSpec
from services.training.model.targets import Task, TaskDecision, encode_target

# Distinct values a part reports per text column, and per target; past this the
# column counts as having "many" values (text: left out as id_like; target: a
# classification target with more classes than any job may have).
MAX_LEVELS_PER_COLUMN = 100_000
MAX_TARGET_VALUES = 1_000
_HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


class HttpRangeFile(io.RawIOBase):
    """A read-only, seekable file over an HTTP(S) URL, read with Range requests."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._client = httpx.Client(timeout=_HTTP_TIMEOUT, follow_redirects=False)
        head = self._client.get(url, headers={"Range": "bytes=0-0"})
        if head.status_code not in (200, 206):
            raise OSError(f"reading the dataset failed: HTTP {head.status_code}")
        total = head.headers.get("Content-Range", "").rpartition("/")[2]
        self._size = int(total) if total.isdigit() else int(head.headers["Content-Length"])
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._size, self._position + len(view)) - 1
        if end < self._position:
            return 0
        response = self._client.get(self._url, headers={"Range": f"bytes={self._position}-{end}"})
        if response.status_code not in (200, 206):
            raise OSError(f"reading the dataset failed: HTTP {response.status_code}")
        data = response.content
        if response.status_code == 200:  # a server that ignores ranges sends everything
            data = data[self._position : end + 1]
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._client.close()
        super().close()


def open_url(url: str) -> BinaryIO:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return open(urllib.parse.unquote(parsed.path), "rb")
    if parsed.scheme in ("http", "https"):
        return io.BufferedReader(HttpRangeFile(url), buffer_size=1 << 20)
    raise ValueError(f"unsupported dataset URL scheme {parsed.scheme!r}")


def row_group_rows(url: str) -> list[int]:
    """Rows of each row group (read from the footer only)."""
    with open_url(url) as source:
        metadata = pq.ParquetFile(source).metadata
        return [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]


def read_rows(url: str, group: int, columns: list[str], target: str) -> tuple[pd.DataFrame, int]:
    """One row group's rows that have a target, as the single-node reader makes them."""
    with open_url(url) as source:
        table = pq.ParquetFile(source).read_row_group(group, columns=columns)
    builder = FrameBuilder(table.schema, target, table.num_rows)
    for batch in table.to_batches():
        builder.add(batch)
    del table
    return builder.finish(), builder.rows_dropped_missing_target


# -- summaries -------------------------------------------------------------------------------


@dataclass
class ColumnSummary:
    present: int = 0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    # Numbers: distinct values in the part, first and last value, monotonic order.
    distinct_count: int = 0
    first: float = float("nan")
    last: float = float("nan")
    increasing: bool = True
    decreasing: bool = True
    # Text and booleans: the distinct values (None: more than MAX_LEVELS_PER_COLUMN).
    levels: set[Any] | None = field(default_factory=set)


@dataclass
class PartSummary:
    rows: int
    rows_dropped_missing_target: int
    # Target value → rows (None: more than MAX_TARGET_VALUES distinct values).
    target_counts: dict[Any, int] | None
    columns: dict[str, ColumnSummary]
    # The first rows, for the model's input example.
    head: pd.DataFrame


def summarize_part(url: str, group: int, columns: list[str], target: str) -> PartSummary:
    frame, dropped = read_rows(url, group, columns, target)
    counts = frame[target].value_counts(dropna=True)
    target_counts = (
        {_plain(value): int(count) for value, count in counts.items() if count > 0}
        if len(counts) <= MAX_TARGET_VALUES
        else None
    )
    summaries = {name: _summarize_column(frame[name]) for name in frame.columns if name != target}
    return PartSummary(len(frame), dropped, target_counts, summaries, frame.head(5))


def _summarize_column(values: pd.Series[Any]) -> ColumnSummary:
    present = values.dropna()
    summary = ColumnSummary(present=len(present))
    if _is_date_or_time(values) and len(present):
        # Only the range counts (one moment throughout is a constant): seconds since 1970.
        seconds = (pd.to_datetime(present, utc=True) - _EPOCH).dt.total_seconds()
        summary.minimum, summary.maximum = float(seconds.min()), float(seconds.max())
        summary.levels = None
        return summary
    if pd.api.types.is_float_dtype(values.dtype) and len(present):
        numbers = present.to_numpy()
        summary.minimum, summary.maximum = float(numbers.min()), float(numbers.max())
        summary.distinct_count = len(np.unique(numbers))
        summary.first, summary.last = float(numbers[0]), float(numbers[-1])
        summary.increasing = bool(present.is_monotonic_increasing)
        summary.decreasing = bool(present.is_monotonic_decreasing)
        summary.levels = None
        return summary
    if isinstance(values.dtype, pd.CategoricalDtype):
        distinct = values.cat.remove_unused_categories().cat.categories
        levels = {str(level) for level in distinct}
    else:
        levels = {_plain(value) for value in present.unique()}
    summary.distinct_count = len(levels)
    summary.levels = levels if len(levels) <= MAX_LEVELS_PER_COLUMN else None
    return summary


def _is_date_or_time(values: pd.Series[Any]) -> bool:
    """Timestamps (datetime64), or dates (Arrow's date32 arrives as `datetime.date` objects)."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return True
    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "date"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- features -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitRule:
    """How a part's rows are split: `fraction` of each class (of all rows for regression)."""

    fraction: float
    seed: int


def load_part(
    url: str,
    group: int,
    columns: list[str],
    target: str,
    spec: FeatureSpec,
    decision: TaskDecision,
    split: SplitRule,
) -> tuple[pd.DataFrame, pd.Series[Any], pd.DataFrame, pd.Series[Any]]:
    """Training features and labels, validation features and labels, of one row group."""
    frame, _ = read_rows(url, group, columns, target)
    labels = encode_target(frame[target], decision)
    features = pyfunc_model.coerce_features(frame, spec)
    del frame
    valid = validation_mask(labels, decision.task, split, group)
    train_rows, valid_rows = np.flatnonzero(~valid), np.flatnonzero(valid)
    return (
        features.iloc[train_rows].reset_index(drop=True),
        pd.Series(labels[train_rows]),
        features.iloc[valid_rows].reset_index(drop=True),
        pd.Series(labels[valid_rows]),
    )


def validation_mask(
    labels: np.ndarray[Any, Any], task: Task, split: SplitRule, group: int
) -> np.ndarray[Any, Any]:
    """The validation rows of a part: a seeded random `fraction` of each class."""
    rng = np.random.default_rng([split.seed, group])
    mask = np.zeros(len(labels), dtype=bool)
    strata = [np.arange(len(labels))] if task == Task.REGRESSION else None
    if strata is None:
        strata = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    for rows in strata:
        chosen = rng.permutation(rows)[: round(split.fraction * len(rows))]
        mask[chosen] = True
    return mask


def empty_features(spec: FeatureSpec) -> pd.DataFrame:
    """The columns and types of `load_part`'s features, with no row (Dask's `meta`)."""
    columns: dict[str, Any] = {}
    for feature in spec["features"]:
        if feature["kind"] == pyfunc_model.CATEGORICAL:
            columns[feature["name"]] = pd.Series(
                [], dtype=pd.CategoricalDtype(feature["categories"])
            )
        elif feature["kind"] == pyfunc_model.DATETIME:  # one number per part
            for part in feature["parts"]:
                columns[pyfunc_model.part_column(feature["name"], part)] = pd.Series(
                    [], dtype="float64"
                )
        else:
            columns[feature["name"]] = pd.Series([], dtype="float64")
    return pd.DataFrame(columns)


# -- the LightGBM callback on every worker --------------------------------------------------


class JobCallback:
    """Checked at every boosting iteration on every worker: stop when the job's stop
    event is set (cancel, deadline, shutdown), report progress at most every second."""

    order = 5

    def __init__(self, stop_event: str, progress_variable: str, total: int) -> None:
        self.stop_event = stop_event
        self.progress_variable = progress_variable
        self.total = total
        self._last = 0.0

    def __call__(self, env: Any) -> None:
        from distributed import Event, Variable

        if Event(self.stop_event).is_set():
            raise RuntimeError("the job was stopped")
        now = time.monotonic()
        if now - self._last >= 1.0 or env.iteration + 1 == self.total:
            self._last = now
            Variable(self.progress_variable).set(env.iteration + 1)


def executing_keys(dask_worker: Any) -> list[str]:
    """The keys of the tasks a worker's threads are running (for `Client.run`; a task
    whose result nobody wants any more is still running until its thread returns)."""
    return [str(task.key) for task in dask_worker.state.executing]


def table_schema(url: str) -> pa.Schema:
    with open_url(url) as source:
        return pq.ParquetFile(source).schema_arrow
