"""LightGBM's binned Dataset from feature columns, with a small footprint of its own.

Binning every row is the job's peak of memory: the feature columns are all
held while LightGBM builds its bins. Built from an Arrow table, LightGBM also
gathers its binning sample (`bin_construct_sample_cnt` rows, 200,000 by
default) into growing C++ vectors of values and row positions per column and
keeps them until every row is binned: ~80 MiB at 28 columns. Here the sample
is gathered column by column into exact-size arrays (one array of positions
shared by every column without zeros), handed to LightGBM to find the bins,
and let go before the rows are pushed into the bins a batch at a time.

The sample rows are LightGBM's own choice (`LGBM_SampleIndices`, as for an
Arrow table), so the bins, and the model, are the same as LightGBM building
from Arrow (tests/training/test_training_pipeline.py compares the model files).
"""

from __future__ import annotations

import ctypes
from typing import Any

import lightgbm as lgb
import lightgbm.basic as lgb_basic
import numpy as np
from lightgbm.basic import _LIB  # type: ignore[attr-defined]  # LightGBM's C API

# LightGBM leaves values this close to zero out of its binning sample (kZeroThreshold).
ZERO_THRESHOLD = 1e-35
# Rows pushed into the bins at a time: 28 columns of float64 are 3.5 MiB a batch.
BATCH_ROWS = 16_384


class FeatureRows(lgb.Sequence):
    """Feature columns read as rows of float64, a batch at a time.

    A float column is taken as it is; an integer column holds the codes of a
    categorical feature, a negative code (pandas' missing level) read as NaN,
    as LightGBM reads a null in an Arrow column.
    """

    batch_size = BATCH_ROWS

    def __init__(self, columns: list[np.ndarray[Any, Any]]) -> None:
        if not columns:
            raise ValueError("no feature columns")
        self._columns = columns
        self._rows = len(columns[0])

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, index: int | slice | list[int]) -> np.ndarray[Any, Any]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._rows)
            return self._take(slice(start, stop, step), len(range(start, stop, step)))
        if isinstance(index, list):
            return self._take(np.asarray(index, dtype=np.int64), len(index))
        return np.asarray(self._take(slice(index, index + 1), 1)[0])

    def _take(self, rows: slice | np.ndarray[Any, Any], count: int) -> np.ndarray[Any, Any]:
        batch = np.empty((count, len(self._columns)), dtype="float64")
        for position, column in enumerate(self._columns):
            batch[:, position] = _as_float(column[rows])
        return batch

    def sample(
        self, rows: np.ndarray[Any, Any]
    ) -> tuple[list[np.ndarray[Any, Any]], list[np.ndarray[Any, Any]]]:
        """Per column, the values of `rows` LightGBM bins on (zeros left out, as it does)
        and their positions in the sample."""
        every = np.arange(len(rows), dtype=np.int32)
        values: list[np.ndarray[Any, Any]] = []
        positions: list[np.ndarray[Any, Any]] = []
        for column in self._columns:
            sampled = _as_float(column[rows])
            kept = (np.abs(sampled) > ZERO_THRESHOLD) | np.isnan(sampled)
            if kept.all():
                values.append(sampled)
                positions.append(every)  # shared: most columns have no zeros
            else:
                values.append(np.ascontiguousarray(sampled[kept]))
                positions.append(every[kept])
        return values, positions


def _as_float(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if values.dtype.kind == "f":
        return values.astype("float64", copy=False)
    floats = values.astype("float64")
    floats[values < 0] = np.nan
    return floats


class _SampledDataset(lgb.Dataset):
    """`lgb.Dataset` over `FeatureRows`, built with LightGBM's streaming calls (what it
    does for any `lgb.Sequence`: bins from a sample, then rows pushed in batches), the
    sample gathered by column and let go before the rows are pushed.

    Every parameter is passed to the sampling and to the bins, as LightGBM's Arrow
    path does (its `Sequence` path passes only the Dataset parameters: without `seed`
    it would sample other rows, and the model would differ).
    """

    def _Dataset__init_from_seqs(  # replaces LightGBM's own (row-by-row) sampling
        self, *, seqs: list[FeatureRows], ref_dataset: Any
    ) -> lgb.Dataset:
        if ref_dataset is not None or len(seqs) != 1:
            raise ValueError("built from one FeatureRows, without a reference Dataset")
        rows = seqs[0]
        total = len(rows)
        params = lgb_basic._param_dict_to_str(self.params)
        chosen = _sample_rows(total, params)
        values, positions = rows.sample(chosen)
        # The bins, found on the sample, in a Dataset of no rows; then the Dataset of every
        # row made after it (as LightGBM makes a validation Dataset), the sample let go
        # first: its values and the rows' bins are not held at once.
        bins = _bins_from_sample(values, positions, len(chosen), params)
        del values, positions
        try:
            self._handle = ctypes.c_void_p()
            lgb_basic._safe_call(
                _LIB.LGBM_DatasetCreateByReference(
                    bins, ctypes.c_int64(total), ctypes.byref(self._handle)
                )
            )
        finally:
            lgb_basic._safe_call(_LIB.LGBM_DatasetFree(bins))
        self._start_row = 0
        for start in range(0, total, rows.batch_size):
            self._push_rows(rows[start : start + rows.batch_size])
        return self


def _sample_rows(total: int, params: str) -> np.ndarray[Any, Any]:
    """The rows LightGBM samples to find bins (as for an Arrow table or a matrix)."""
    chosen = np.empty(lgb_basic._get_sample_count(total, params), dtype=np.int32)
    taken = ctypes.c_int32(0)
    lgb_basic._safe_call(
        _LIB.LGBM_SampleIndices(
            ctypes.c_int32(total),
            lgb_basic._c_str(params),
            chosen.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            ctypes.byref(taken),
        )
    )
    return chosen[: taken.value]


def _bins_from_sample(
    values: list[np.ndarray[Any, Any]],
    positions: list[np.ndarray[Any, Any]],
    sampled: int,
    params: str,
) -> ctypes.c_void_p:
    """A Dataset handle with its bins found on the sample, room for one row (never filled)."""
    columns = len(values)
    value_pointers = (ctypes.POINTER(ctypes.c_double) * columns)()
    position_pointers = (ctypes.POINTER(ctypes.c_int32) * columns)()
    for index in range(columns):
        value_pointers[index] = values[index].ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        position_pointers[index] = positions[index].ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
    counts = np.array([len(kept) for kept in positions], dtype=np.int32)
    handle = ctypes.c_void_p()
    lgb_basic._safe_call(
        _LIB.LGBM_DatasetCreateFromSampledColumn(
            ctypes.cast(value_pointers, ctypes.POINTER(ctypes.POINTER(ctypes.c_double))),
            ctypes.cast(position_pointers, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32))),
            ctypes.c_int32(columns),
            counts.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            ctypes.c_int32(sampled),
            ctypes.c_int32(1),
            ctypes.c_int64(1),
            lgb_basic._c_str(params),
            ctypes.byref(handle),
        )
    )
    return handle


def binned_dataset(
    columns: list[np.ndarray[Any, Any]],
    labels: np.ndarray[Any, Any],
    names: list[str],
    categorical: list[int],
    params: dict[str, Any],
) -> lgb.Dataset:
    """One constructed (binned) Dataset of the rows of `columns` (see `FeatureRows`)."""
    dataset = _SampledDataset(
        FeatureRows(columns),
        label=labels,
        feature_name=names,
        categorical_feature=categorical,
        params=params,
        free_raw_data=True,
    )
    return dataset.construct()
