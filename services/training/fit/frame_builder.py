"""Arrow record batches in, one compact DataFrame out, each value held once.

The Trainer used to collect the whole Arrow table and then convert it to
pandas: two copies of every value, then more as LightGBM made its own. Here
each record batch is converted as it arrives and then let go:

- rows whose target is missing (or blank) are dropped at once (counted), with
  the same rule the pipeline applies (`targets.target_present`);
- numbers become float64 NumPy chunks, missing values as NaN (what the model's
  preprocessing makes of them anyway);
- text becomes dictionary-encoded chunks (4 bytes a row plus the few distinct
  values), turned into one pandas `category` column at the end;
- any other type (booleans, dates) is kept as Arrow and converted at the end
  as before.

Each number column is one float64 array that batches are written into, sized
by the expected row count (the dataset's) and grown or shrunk in place
(`ndarray.resize`: a `realloc`, which moves large blocks by remapping pages,
not by copying). Collecting per-batch chunks and concatenating them at the end
held every number twice for a moment: chunks smaller than the allocator's mmap
threshold stay in the heap after they are freed, so 1M rows x 24 numbers
peaked ~180 MiB higher in `finish()` than the frame it built. `finish()` builds
the DataFrame without copying the number columns, so peak memory is about one
float64 copy of the features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from runtime.memory import release_free_memory
from services.training.model.targets import target_present


class FrameBuilder:
    """Accumulates record batches of one Arrow schema into a compact DataFrame."""

    def __init__(self, schema: pa.Schema, target: str, expected_rows: int = 0) -> None:
        """`expected_rows`: the rows the stream will hold, if known (0: grown as needed)."""
        if target not in schema.names:
            raise KeyError(target)
        self._schema = schema
        self._target = target
        self._capacity = max(0, expected_rows)
        self._numbers: dict[str, np.ndarray[Any, Any]] = {}
        self._texts: dict[str, list[pa.Array]] = {}
        self._others: dict[str, list[pa.Array]] = {}
        for field in schema:
            if field.name == target:
                self._others[field.name] = []
            elif pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
                self._numbers[field.name] = np.empty(self._capacity, dtype="float64")
            elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                self._texts[field.name] = []
            else:
                self._others[field.name] = []
        self.rows = 0
        self.rows_dropped_missing_target = 0

    def add(self, batch: pa.RecordBatch) -> None:
        """Convert one batch and keep only the converted values."""
        batch = self._rows_with_target(batch)
        if batch.num_rows == 0:
            return
        start, self.rows = self.rows, self.rows + batch.num_rows
        self._reserve(self.rows)
        for name, whole in self._numbers.items():
            column = batch.column(name).cast(pa.float64())
            # Copied into the column: a view would keep the decoded message alive.
            whole[start : self.rows] = column.to_numpy(zero_copy_only=False)
        for name, encoded in self._texts.items():
            encoded.append(pc.dictionary_encode(batch.column(name)))
        for name, kept in self._others.items():
            # A copy, for the same reason (small: the target, booleans, dates).
            kept.append(pa.concat_arrays([batch.column(name)]))

    def _reserve(self, rows: int) -> None:
        """Room for `rows` in every number column: more rows than expected double it."""
        if rows <= self._capacity:
            return
        self._capacity = max(rows, 2 * self._capacity)
        for whole in self._numbers.values():
            whole.resize(self._capacity, refcheck=False)  # never viewed before finish()

    def _rows_with_target(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        target = _to_pandas(pa.chunked_array([batch.column(self._target)]))
        present = target_present(target).to_numpy(dtype=bool)
        dropped = int((~present).sum())
        if not dropped:
            return batch
        self.rows_dropped_missing_target += dropped
        return batch.filter(pa.array(present))

    def finish(self) -> pd.DataFrame:
        """The DataFrame, in the schema's column order; the builder is empty afterwards."""
        columns: dict[str, Any] = {}
        for field in self._schema:
            name = field.name
            if name in self._numbers:
                whole = self._numbers.pop(name)
                # In place: rows dropped (no target) or fewer than expected leave no slack.
                whole.resize(self.rows, refcheck=False)
                columns[name] = whole
            elif name in self._texts:
                encoded = self._texts.pop(name)
                columns[name] = _to_pandas(pa.chunked_array(encoded, _dictionary_type(field)))
            else:
                kept = self._others.pop(name)
                columns[name] = _to_pandas(pa.chunked_array(kept, field.type))
        # Freed batches and messages leave pages in the allocators; nothing reuses them now.
        pa.default_memory_pool().release_unused()
        release_free_memory()
        return pd.DataFrame(columns, copy=False)


def _dictionary_type(field: pa.Field) -> pa.DataType:
    return pa.dictionary(pa.int32(), field.type)


def _to_pandas(array: pa.ChunkedArray) -> pd.Series[Any]:
    """Text as `category` (from Arrow dictionaries); other types as pandas makes them."""
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = array.dictionary_encode()
    series: pd.Series[Any] = array.to_pandas()
    return series
