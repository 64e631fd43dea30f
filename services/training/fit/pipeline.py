"""Training as a pure function: a DataFrame and its column types in, a trained
booster with honest validation metrics out. No I/O, no MLflow, no NATS, so it
runs the same in the Trainer, in the tests and in bench/quality.py.

Steps: drop rows whose target is missing; decide the task (binary, multiclass,
regression) from the target; choose features (dropping ID-like, constant,
all-missing and date columns, with why); turn rows into features exactly as
the logged model will (`pyfunc_model.coerce_features`: numbers as float,
text as pandas `category` for LightGBM's native categorical splits, missing
values left missing); hold out a validation split (stratified for
classification); train LightGBM with early stopping on the validation split;
measure the task's metrics on it.

Memory: the features are held once (`PreparedData.features`, every row with a
target). LightGBM's Dataset is built from them without a copy
(`PreparedData.lightgbm_dataset`, `fit/binning.py`: one binned Dataset of every
row), and the training and validation splits are subsets of it, as `lightgbm.cv`
builds its folds; only the validation rows are copied, to be scored at the end,
a column at a time once LightGBM has binned every row (`release_rows`).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.model_selection import train_test_split
from sklearn.model_selection._split import _approximate_mode

from runtime.limits import echo
from runtime.memory import release_free_memory
from services.training import reasons
from services.training.fit.binning import binned_dataset
from services.training.fit.report import evaluation_report
from services.training.model import pyfunc_model
from services.training.model.columns import ColumnInfo, raw_example, select_features
from services.training.model.params import ParamValue
from services.training.model.pyfunc_model import FeatureSpec
from services.training.model.scoring import training_ranges
from services.training.model.targets import (
    PRIMARY_METRICS,
    PrimaryMetric,
    Task,
    TaskDecision,
    TrainingFailure,
    check_class_sizes,
    decide_task,
    encode_target,
    json_label,
    target_present,
)

MIN_TRAINING_ROWS = 10
MIN_BOOSTING_ROUNDS = 50
MAX_DEFAULT_BOOSTING_ROUNDS = 1000
BASE_LEARNING_RATE = 0.1
MAX_DEFAULT_LEARNING_RATE = 0.3
DEFAULT_EARLY_STOPPING_ROUNDS = 50
_LIGHTGBM_FORBIDDEN_NAME_CHARS = re.compile(r'[\[\]{}":,]')


@dataclass(frozen=True)
class PipelineConfig:
    validation_fraction: float = 0.2
    seed: int = 42
    min_rows_per_class: int = 5
    max_classes: int = 100
    boosting_work_budget: float = 1.5e9
    num_threads: int = 0


class TrainingStopped(Exception):
    """Training was interrupted from outside: cancel, deadline or shutdown."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class TrainingHooks(Protocol):
    def check(self) -> None:
        """Raise TrainingStopped when the job must stop."""

    def decided(self, decision: TaskDecision) -> None:
        """Called once the task is known, before training starts."""

    def progress(self, iteration: int, total: int, metric_name: str, value: float) -> None:
        """Called after every boosting iteration."""


class NoHooks:
    def check(self) -> None:
        return None

    def decided(self, decision: TaskDecision) -> None:
        return None

    def progress(self, iteration: int, total: int, metric_name: str, value: float) -> None:
        return None


@dataclass
class PreparedData:
    """Rows ready for LightGBM, and how they were split.

    `features` holds every row with a target as the model's preprocessing
    makes it (`pyfunc_model.coerce_features`), `labels` their encoded targets;
    `train_index` and `valid_index` are positions in both. Anything that trains
    on these rows (one model, or folds of a search) gets its LightGBM data from
    `lightgbm_dataset(params)` and takes `.subset(indices)` of it.
    """

    decision: TaskDecision
    spec: FeatureSpec
    features: pd.DataFrame
    labels: np.ndarray[Any, Any]
    train_index: np.ndarray[Any, Any]
    valid_index: np.ndarray[Any, Any]
    rows_used: int
    rows_dropped_missing_target: int
    dropped_columns: list[tuple[str, str]]
    input_example: pd.DataFrame
    # The rows as they were read (targets present; a reference, not a copy) until
    # `release_rows`: their validation rows are what the current champion is scored on.
    # Their number columns are the very arrays of `features` (copy-on-write), so
    # keeping them while LightGBM bins the rows costs only their other columns.
    rows: pd.DataFrame | None = None
    target: str = ""
    # The validation rows, copied out of `features` / `rows` when first asked for.
    _valid_features: pd.DataFrame | None = None
    _valid_inputs: pd.DataFrame | None = None

    @property
    def valid_features(self) -> pd.DataFrame:
        """The validation rows (a copy, kept: they are scored once training is over)."""
        if self._valid_features is None:
            self._valid_features = self.features.iloc[self.valid_index]
        return self._valid_features

    @property
    def valid_inputs(self) -> pd.DataFrame | None:
        """The validation rows as read, without the target (kept for the champion)."""
        if self._valid_inputs is None and self.rows is not None:
            self._valid_inputs = _inputs_sharing_features(
                self.rows.drop(columns=[self.target]), self
            )
        return self._valid_inputs

    def release_rows(self) -> None:
        """Let the rows go once LightGBM holds its binned copy; the validation rows stay.

        Copied out only now, not before LightGBM bins every row: its binning is the
        job's peak of memory, and the validation rows would only add to it. And a
        column at a time, each let go once its validation rows are copied: a whole
        copy of the validation rows beside every column would be a second peak.
        """
        features = {name: self.features[name] for name in self.features.columns}
        inputs: dict[str, pd.Series[Any]] = {}
        if self.rows is not None and self._valid_inputs is None:
            inputs = {name: self.rows[name] for name in self.rows.columns if name != self.target}
        # An empty copy: a slice (even of no rows) would keep every column alive.
        self.features = self.features.head(0).copy()
        self.rows = None
        valid = self.valid_index
        # A read column that is a feature's very array (numbers) is not copied twice:
        # its validation rows are the feature's.
        valid_inputs: dict[str, pd.Series[Any] | None] = {
            name: None
            if name in features and _same_array(read, features[name])
            else read.iloc[valid]
            for name, read in inputs.items()
        }
        inputs.clear()
        picked: dict[str, pd.Series[Any]] = {}
        for name in list(features):
            column = features.pop(name)
            if self._valid_features is None:
                picked[name] = column.iloc[valid]
            del column  # the whole column goes before the next one is copied
        if self._valid_features is None:
            self._valid_features = pd.DataFrame(picked, copy=False)
        if valid_inputs:
            self._valid_inputs = _valid_inputs(valid_inputs, self._valid_features)

    @property
    def train_labels(self) -> np.ndarray[Any, Any]:
        return np.asarray(self.labels[self.train_index])

    @property
    def valid_labels(self) -> np.ndarray[Any, Any]:
        return np.asarray(self.labels[self.valid_index])

    @property
    def train_features(self) -> pd.DataFrame:
        """The training rows (a copy: for tools that need them as a frame)."""
        return self.features.iloc[self.train_index]

    @property
    def feature_count(self) -> int:
        return len(pyfunc_model.feature_names(self.spec))

    def lightgbm_dataset(self, params: dict[str, Any]) -> lgb.Dataset:
        """One constructed (binned) LightGBM Dataset of every row, with its labels.

        Built from the feature columns as they are (`fit/binning.py`): numbers
        without a copy, categories as their codes in the model's level order
        (missing or unseen levels as NaN), exactly what LightGBM makes of the
        pandas `category` columns the pyfunc model gives it at predict time. Bins
        are found on a sample of all rows (LightGBM's `bin_construct_sample_cnt`).
        """
        columns = pyfunc_model.feature_names(self.spec)  # a date is several columns
        values: list[np.ndarray[Any, Any]] = []
        categorical: list[int] = []
        for index, column in enumerate(columns):
            feature = self.features[column]
            if isinstance(feature.dtype, pd.CategoricalDtype):
                categorical.append(index)
                values.append(feature.cat.codes.to_numpy())  # 1-2 bytes a row, -1 missing
            else:
                values.append(feature.to_numpy(dtype="float64"))
        return binned_dataset(
            values, self.labels, lightgbm_feature_names(columns), categorical, params
        )


@dataclass
class TrainingResult:
    decision: TaskDecision
    spec: FeatureSpec
    booster: lgb.Booster
    metrics: dict[str, float]
    # LightGBM's validation metrics per iteration, e.g. {"auc": [...], "binary_logloss": [...]}.
    curve: dict[str, list[float]]
    best_iteration: int
    effective_params: dict[str, ParamValue]
    rows_used: int
    rows_dropped_missing_target: int
    validation_rows: int
    dropped_columns: list[tuple[str, str]]
    # Total gain of each feature's splits, best first.
    importance: dict[str, float]
    input_example: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    # The validation rows as read and their encoded labels: the champion is scored on
    # them before it is replaced (tracking/champion.py). None on Dask. After a search,
    # the best configuration's held-out rows (fit/search.py).
    valid_inputs: pd.DataFrame | None = None
    valid_labels: np.ndarray[Any, Any] | None = None
    # The new version's metrics on `valid_inputs` when they are not `metrics` (a
    # search: its held-out predictions pooled, where `metrics` are the folds' means).
    held_out_metrics: dict[str, float] | None = None
    # The evaluation report (fit/report.py) on the validation rows.
    evaluation: Any = None
    # What a search tried and chose (fit/search.py); None for the default job.
    search: Any = None

    @property
    def model_text(self) -> str:
        """The model file (LightGBM's model.txt at the kept iteration), exactly as saved."""
        return str(self.booster.model_to_string(num_iteration=self.best_iteration))

    @property
    def model_sha256(self) -> str:
        return hashlib.sha256(self.model_text.encode()).hexdigest()

    # How it was trained: {"engine": "single_node"}, or Dask's cluster size and partitioning.
    engine: dict[str, str] = field(default_factory=lambda: {"engine": "single_node"})

    @property
    def features(self) -> list[str]:
        return pyfunc_model.feature_names(self.spec)

    @property
    def primary_metric(self) -> PrimaryMetric:
        return PRIMARY_METRICS[self.decision.task]


def train_model(
    frame: pd.DataFrame,
    columns: list[ColumnInfo],
    target: str,
    requested_task: Task,
    params: dict[str, ParamValue],
    config: PipelineConfig,
    hooks: TrainingHooks | None = None,
    rows_dropped_missing_target: int = 0,
) -> TrainingResult:
    """The whole pipeline; raises TrainingFailure or TrainingStopped.

    The frame is not referenced once prepared: a caller that passes it without
    keeping a reference lets its memory go once LightGBM has binned it.
    `rows_dropped_missing_target` counts rows the caller already left out
    (the dataset reader drops them while reading).
    """
    hooks = hooks or NoHooks()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    prepared = prepare(frame, columns, target, requested_task, config, rows_dropped_missing_target)
    del frame
    check_params_for_task(params, prepared.decision.task)
    timings["prepare_seconds"] = time.perf_counter() - started
    hooks.decided(prepared.decision)
    hooks.check()
    started = time.perf_counter()
    result = fit(prepared, params, config, hooks)
    timings["train_seconds"] = time.perf_counter() - started
    result.timings.update(timings)
    return result


# -- preparation ---------------------------------------------------------------------


def prepare(
    frame: pd.DataFrame,
    columns: list[ColumnInfo],
    target: str,
    requested_task: Task,
    config: PipelineConfig,
    rows_dropped_missing_target: int = 0,
) -> PreparedData:
    table = prepare_table(
        frame, columns, target, requested_task, config, rows_dropped_missing_target
    )
    del frame
    train_index, valid_index = split_rows(table.labels, table.decision.task, config)
    release_free_memory()  # the preparation's temporaries, before LightGBM's own
    return PreparedData(
        decision=table.decision,
        spec=table.spec,
        features=table.features,
        labels=table.labels,
        train_index=train_index,
        valid_index=valid_index,
        rows_used=table.rows_used,
        rows_dropped_missing_target=table.rows_dropped_missing_target,
        dropped_columns=table.dropped_columns,
        input_example=table.input_example,
        rows=table.rows,
        target=target,
    )


def _inputs_sharing_features(inputs: pd.DataFrame, prepared: PreparedData) -> pd.DataFrame:
    """`inputs.iloc[prepared.valid_index]`, where a column is the same array as its feature column
    (numbers read as float64) taken from `prepared.valid_features` instead of copied
    again: the validation rows' numbers are then held once, not twice."""
    valid_index = prepared.valid_index
    columns: dict[str, pd.Series[Any] | None] = {}
    for name in inputs.columns:
        read = inputs[name]
        feature = prepared.features.get(name)
        shared = feature is not None and _same_array(read, feature)
        columns[name] = None if shared else read.iloc[valid_index]
    return _valid_inputs(columns, prepared.valid_features)


def _valid_inputs(
    columns: dict[str, pd.Series[Any] | None], valid_features: pd.DataFrame
) -> pd.DataFrame:
    """The validation rows as read, from their columns; None: the feature's column as it is."""
    index = valid_features.index
    taken: dict[str, pd.Series[Any]] = {}
    for name, rows in columns.items():
        if rows is None:
            values = valid_features[name].to_numpy()
            rows = pd.Series(values, index=index, name=name, copy=False)
        taken[name] = rows
    return pd.DataFrame(taken, index=index, copy=False)


def _same_array(first: pd.Series[Any], second: pd.Series[Any]) -> bool:
    if first.dtype != second.dtype or not isinstance(first.dtype, np.dtype):
        return False
    return bool(np.shares_memory(first.to_numpy(), second.to_numpy()))


@dataclass
class PreparedTable:
    """Every usable row as features and encoded labels, before any split (a search
    splits it into folds; the default job into training and validation rows)."""

    decision: TaskDecision
    spec: FeatureSpec
    features: pd.DataFrame
    labels: np.ndarray[Any, Any]
    rows_used: int
    rows_dropped_missing_target: int
    dropped_columns: list[tuple[str, str]]
    input_example: pd.DataFrame
    # The rows as read, targets present (a reference, not a copy).
    rows: pd.DataFrame | None = None


def prepare_table(
    frame: pd.DataFrame,
    columns: list[ColumnInfo],
    target: str,
    requested_task: Task,
    config: PipelineConfig,
    rows_dropped_missing_target: int = 0,
) -> PreparedTable:
    """`rows_dropped_missing_target`: rows the caller already left out (the reader)."""
    by_name = {column.name: column for column in columns}
    if target not in by_name or target not in frame.columns:
        raise TrainingFailure(
            reasons.TARGET_COLUMN_NOT_FOUND,
            f"the dataset has no column {target!r}",
            invalid_argument=True,
            metadata={"column": echo(target)},
        )
    present = target_present(frame[target])
    rows_dropped = int((~present).sum())
    if rows_dropped:
        frame = frame.loc[present.to_numpy()].reset_index(drop=True)
    rows_dropped += rows_dropped_missing_target
    if len(frame) == 0:
        raise TrainingFailure(reasons.TARGET_ALL_MISSING, f"every value of {target!r} is missing")
    decision = decide_task(frame[target], by_name[target].type, requested_task, config.max_classes)
    labels = encode_target(frame[target], decision)
    if len(frame) < MIN_TRAINING_ROWS:
        raise TrainingFailure(
            reasons.DATASET_TOO_SMALL,
            f"{len(frame)} rows with a target; at least {MIN_TRAINING_ROWS} are needed",
        )
    if decision.task != Task.REGRESSION:
        check_class_sizes(labels, decision, config.min_rows_per_class)
    features, dropped = select_features(frame, columns, target)
    if not features:
        detail = ", ".join(f"{name} ({why})" for name, why in dropped) or "none"
        raise TrainingFailure(
            reasons.NO_USABLE_FEATURES,
            f"no column besides the target can be used as a feature; left out: {detail}",
        )
    spec: FeatureSpec = {
        "format_version": pyfunc_model.FORMAT_VERSION,
        "task": decision.task.value.lower(),
        "target_column": target,
        "features": features,
        "class_labels": [json_label(label) for label in decision.class_labels],
        "dropped_columns": [{"name": name, "reason": why} for name, why in dropped],
    }
    prepared_features = pyfunc_model.coerce_features(frame, spec)
    # What Predict's trust flags compare new rows with (model/scoring.py).
    spec["ranges"] = training_ranges(prepared_features, spec)
    return PreparedTable(
        decision=decision,
        spec=spec,
        features=prepared_features,
        labels=labels,
        rows_used=len(frame),
        rows_dropped_missing_target=rows_dropped,
        dropped_columns=dropped,
        input_example=raw_example(frame, spec),
        rows=frame,
    )


def split_rows(
    labels: np.ndarray[Any, Any], task: Task, config: PipelineConfig
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Row indices of the training and validation splits (stratified for classification)."""
    if task != Task.REGRESSION:
        lean = stratified_split(labels, config.validation_fraction, config.seed)
        if lean is not None:
            return np.sort(lean[0]), np.sort(lean[1])
    indices = np.arange(len(labels))
    stratify = labels if task != Task.REGRESSION else None
    try:
        train_index, valid_index = train_test_split(
            indices,
            test_size=config.validation_fraction,
            random_state=config.seed,
            shuffle=True,
            stratify=stratify,
        )
    except ValueError as error:
        raise TrainingFailure(
            reasons.DATASET_TOO_SMALL, f"cannot hold out a validation split: {error}"
        ) from error
    return np.sort(train_index), np.sort(valid_index)


def stratified_split(
    labels: np.ndarray[Any, Any], test_size: float, seed: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """scikit-learn's stratified `train_test_split(shuffle=True, random_state=seed)`: the
    same rows, drawn with the same random calls, without the Python list of one NumPy
    scalar per row it builds (80 bytes a row: 80 MB of peak memory at 1M rows).

    None when scikit-learn would refuse the split (a class of one row, more classes
    than rows on a side): `split_rows` then lets it say why.
    `tests/training/test_training_pipeline.py` checks both give the same rows.
    """
    rows = len(labels)
    valid_rows = math.ceil(test_size * rows)
    train_rows = rows - valid_rows
    classes, class_of_row, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2 or min(train_rows, valid_rows) < len(classes):
        return None
    class_rows = np.split(np.argsort(class_of_row, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    train_per_class = _approximate_mode(class_counts, train_rows, rng)
    valid_per_class = _approximate_mode(class_counts - train_per_class, valid_rows, rng)
    train: list[np.ndarray[Any, Any]] = []
    valid: list[np.ndarray[Any, Any]] = []
    for index in range(len(classes)):
        shuffled = class_rows[index].take(rng.permutation(class_counts[index]), mode="clip")
        taken = train_per_class[index]
        train.append(shuffled[:taken])
        valid.append(shuffled[taken : taken + valid_per_class[index]])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(valid))


def check_params_for_task(params: dict[str, ParamValue], task: Task) -> None:
    """Overrides that only make sense for some tasks (the allow-list cannot know the task)."""
    binary_only = [name for name in ("is_unbalance", "scale_pos_weight") if name in params]
    if binary_only and task != Task.BINARY:
        raise _param_for_task(binary_only, "only apply to BINARY jobs")
    if "class_weight" in params and task == Task.REGRESSION:
        raise _param_for_task(["class_weight"], "only applies to classification jobs")
    if "objective" in params and task != Task.REGRESSION:
        raise _param_for_task(["objective"], "is set by the task for classification")


def _param_for_task(names: Sequence[str], why: str) -> TrainingFailure:
    return TrainingFailure(
        reasons.PARAM_INVALID_VALUE, f"{', '.join(names)} {why}", invalid_argument=True
    )


# -- training ------------------------------------------------------------------------


LIGHTGBM_METRICS = {
    Task.BINARY: ["auc", "binary_logloss"],
    Task.MULTICLASS: ["multi_logloss", "multi_error"],
    Task.REGRESSION: ["rmse", "l1"],
}
DEFAULT_OBJECTIVES = {
    Task.BINARY: "binary",
    Task.MULTICLASS: "multiclass",
    Task.REGRESSION: "regression",
}
VALID_NAME = "validation"
LARGE_VALIDATION_ROWS = 50_000


def lightgbm_params(
    params: dict[str, ParamValue],
    prepared: PreparedData,
    config: PipelineConfig,
) -> tuple[dict[str, Any], int, int]:
    """LightGBM's parameters, the round cap and the early-stopping patience (0: none)."""
    return lightgbm_params_for(
        params,
        prepared.decision,
        RowCounts(len(prepared.train_index), len(prepared.valid_index), prepared.feature_count),
        config,
    )


@dataclass(frozen=True)
class RowCounts:
    train: int
    valid: int
    features: int


def lightgbm_params_for(
    params: dict[str, ParamValue],
    decision: TaskDecision,
    counts: RowCounts,
    config: PipelineConfig,
) -> tuple[dict[str, Any], int, int]:
    """`lightgbm_params` from the counts alone (what distributed training knows)."""
    task = decision.task
    overrides = dict(params)
    rounds = int(overrides.pop("num_iterations", 0)) or rounds_for(
        counts.train, counts.features, config
    )
    patience = int(overrides.pop("early_stopping_round", DEFAULT_EARLY_STOPPING_ROUNDS))
    overrides.pop("class_weight", None)  # applied as row weights
    learning_rate = (
        default_learning_rate(rounds) if "num_iterations" not in params else BASE_LEARNING_RATE
    )
    chosen: dict[str, Any] = {
        "objective": DEFAULT_OBJECTIVES[task],
        "learning_rate": learning_rate,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "seed": config.seed,
        "force_col_wise": True,
        "feature_pre_filter": False,
        "num_threads": config.num_threads,
        "verbosity": -1,
        **overrides,
        "metric": validation_metrics(task, counts.valid),
    }
    if task == Task.MULTICLASS:
        chosen["num_class"] = len(decision.class_labels)

    if not chosen["num_threads"]:
        chosen.pop("num_threads")
    return chosen, rounds, patience


def validation_metrics(task: Task, validation_rows: int) -> list[str]:
    """LightGBM's per-iteration validation metrics; the first one drives early stopping.

    Binary jobs stop early on AUC (the primary metric), except on large validation
    splits where sorting every iteration's scores would cost as much as the
    boosting itself: there log loss leads and AUC is measured once at the end.
    """
    if task == Task.BINARY and validation_rows > LARGE_VALIDATION_ROWS:
        return ["binary_logloss"]
    return LIGHTGBM_METRICS[task]


def default_rounds(prepared: PreparedData, config: PipelineConfig) -> int:
    """Bounded boosting work: fewer rounds on bigger tables, between 50 and 1000."""
    return rounds_for(len(prepared.train_index), prepared.feature_count, config)


def rounds_for(train_rows: int, features: int, config: PipelineConfig) -> int:
    cells = max(1, train_rows * max(1, features))
    return int(
        min(
            MAX_DEFAULT_BOOSTING_ROUNDS,
            max(MIN_BOOSTING_ROUNDS, config.boosting_work_budget / cells),
        )
    )


def default_learning_rate(rounds: int) -> float:
    """0.1 with the full 1000 rounds; larger steps when the work budget allows fewer.

    0.1 x sqrt(1000 / rounds), at most 0.3 (CatBoost likewise derives its default
    learning rate from the number of iterations): a big table trained for 70 rounds
    at 0.3 gets further than at 0.1, at the same cost.
    """
    scaled = BASE_LEARNING_RATE * math.sqrt(MAX_DEFAULT_BOOSTING_ROUNDS / max(1, rounds))
    return round(min(MAX_DEFAULT_LEARNING_RATE, max(BASE_LEARNING_RATE, scaled)), 4)


def fit(
    prepared: PreparedData,
    params: dict[str, ParamValue],
    config: PipelineConfig,
    hooks: TrainingHooks,
) -> TrainingResult:
    chosen, rounds, patience = lightgbm_params(params, prepared, config)
    every_row = prepared.lightgbm_dataset(chosen)
    # LightGBM keeps its own binned copy: the rows are no longer needed.
    prepared.release_rows()
    release_free_memory()
    train_set = subset(every_row, prepared.train_index)
    valid_set = subset(every_row, prepared.valid_index)
    if params.get("class_weight") == "balanced":
        # On the training rows only: the validation metric stays unweighted.
        train_set.set_weight(_class_weights(prepared))
    evaluation: dict[str, Any] = {}
    callbacks: list[Callable[..., None]] = [
        lgb.record_evaluation(evaluation),
        _hooks_callback(hooks, rounds),
    ]
    if patience > 0:
        callbacks.append(lgb.early_stopping(patience, first_metric_only=True, verbose=False))
    booster = lgb.train(
        chosen,
        train_set,
        num_boost_round=rounds,
        valid_sets=[valid_set],
        valid_names=[VALID_NAME],
        callbacks=callbacks,
    )
    del train_set, valid_set, every_row
    # The levels of each categorical feature, as a Booster trained on pandas records
    # them (saved in model.txt): predictions on `category` columns map by them.
    booster.pandas_categorical = [
        feature["categories"]
        for feature in prepared.spec["features"]
        if feature["kind"] == pyfunc_model.CATEGORICAL
    ]
    best = booster.best_iteration or booster.current_iteration()
    hooks.check()
    raw = np.asarray(booster.predict(prepared.valid_features, num_iteration=best))
    metrics = evaluate(prepared.decision.task, prepared.valid_labels, raw)
    class_names = [pyfunc_model.label_text(label) for label in prepared.decision.class_labels]
    report = evaluation_report(prepared.decision.task, prepared.valid_labels, raw, class_names)
    importance = dict(
        zip(
            pyfunc_model.feature_names(prepared.spec),
            (float(gain) for gain in booster.feature_importance("gain", iteration=best)),
            strict=True,
        )
    )
    effective: dict[str, ParamValue] = {
        key: value for key, value in chosen.items() if key not in ("metric", "verbosity")
    }
    effective |= {"num_iterations": rounds, "early_stopping_round": patience}
    if "class_weight" in params:
        effective["class_weight"] = params["class_weight"]
    return TrainingResult(
        decision=prepared.decision,
        spec=prepared.spec,
        booster=booster,
        metrics=metrics,
        curve={
            name: [float(value) for value in values]
            for name, values in evaluation.get(VALID_NAME, {}).items()
        },
        best_iteration=int(best),
        effective_params=effective,
        rows_used=prepared.rows_used,
        rows_dropped_missing_target=prepared.rows_dropped_missing_target,
        validation_rows=len(prepared.valid_labels),
        dropped_columns=prepared.dropped_columns,
        importance=dict(sorted(importance.items(), key=lambda item: -item[1])),
        input_example=prepared.input_example,
        valid_inputs=prepared.valid_inputs,
        valid_labels=prepared.valid_labels,
        evaluation=report,
    )


def subset(dataset: lgb.Dataset, indices: np.ndarray[Any, Any]) -> lgb.Dataset:
    """`dataset.subset(indices)`, constructed, from sorted int indices as they are.

    `Dataset.subset` sorts a Python list of every index (tens of bytes a row);
    the indices here are already sorted NumPy integers, which LightGBM reads as
    they are when constructing the subset.
    """
    part = dataset.subset([])
    part.used_indices = indices  # type: ignore[assignment]
    return part.construct()


def lightgbm_feature_names(names: list[str]) -> list[str]:
    """LightGBM refuses JSON punctuation in feature names; predictions are by position."""
    seen: set[str] = set()
    safe: list[str] = []
    for name in names:
        candidate = _LIGHTGBM_FORBIDDEN_NAME_CHARS.sub("_", name) or "feature"
        base, suffix = candidate, 1
        while candidate in seen:
            suffix += 1
            candidate = f"{base}_{suffix}"
        seen.add(candidate)
        safe.append(candidate)
    return safe


def _class_weights(prepared: PreparedData) -> np.ndarray[Any, Any]:
    labels = prepared.train_labels
    counts = np.bincount(labels, minlength=len(prepared.decision.class_labels)).astype("float64")
    per_class = len(labels) / (len(counts) * np.maximum(counts, 1.0))
    return np.asarray(per_class[labels])


def _hooks_callback(hooks: TrainingHooks, total: int) -> Callable[..., None]:
    def callback(env: Any) -> None:
        hooks.check()
        if env.evaluation_result_list:
            _, metric_name, value, _ = env.evaluation_result_list[0][:4]
            hooks.progress(env.iteration + 1, total, str(metric_name), float(value))

    callback.order = 5  # type: ignore[attr-defined]  # before early stopping (order 30)
    return callback


def evaluate(
    task: Task, labels: np.ndarray[Any, Any], raw: np.ndarray[Any, Any]
) -> dict[str, float]:
    """The task's validation metrics, keyed as TrainingJob.metrics documents them."""
    if task == Task.REGRESSION:
        mse = float(skm.mean_squared_error(labels, raw))
        return {
            "rmse": math.sqrt(mse),
            "mae": float(skm.mean_absolute_error(labels, raw)),
            "r2": float(skm.r2_score(labels, raw)),
            "mse": mse,
        }
    probabilities = pyfunc_model.class_probabilities(
        raw, "binary" if task == Task.BINARY else "multiclass"
    )
    predicted = probabilities.argmax(axis=1)
    classes = list(range(probabilities.shape[1]))
    result = {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "log_loss": float(skm.log_loss(labels, probabilities, labels=classes)),
    }
    if task == Task.BINARY:
        result |= {
            "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
            "roc_auc": float(skm.roc_auc_score(labels, probabilities[:, 1])),
            "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
            "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        }
    else:
        result["macro_f1"] = float(
            skm.f1_score(labels, predicted, average="macro", labels=classes, zero_division=0)
        )
    return result
