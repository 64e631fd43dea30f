"""The target column: which task it calls for, and its values as class indices.

AUTO decides from the target's non-missing values: two distinct labels are
BINARY; three or more text or boolean labels, or at most ten distinct whole
numbers, are MULTICLASS; other numbers are REGRESSION. CLASSIFICATION is AUTO
without REGRESSION: two labels are BINARY, more are MULTICLASS, numbers too. An
explicit task is checked against the target. Failures carry a stable reason code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from services.training import reasons
from services.training.model import pyfunc_model
from services.training.model.columns import ColumnType

MAX_NUMERIC_CLASSES = 10


class Task(StrEnum):
    AUTO = "AUTO"
    BINARY = "BINARY"
    MULTICLASS = "MULTICLASS"
    REGRESSION = "REGRESSION"
    CLASSIFICATION = "CLASSIFICATION"  # asked for only: trained as BINARY or MULTICLASS


class TrainingFailure(Exception):
    """The data or the request cannot be trained; `reason` is the stable code.

    `code` names the canonical gRPC code: INVALID_ARGUMENT when the request
    contradicts the data (unknown target, a task or parameter the target cannot
    have), FAILED_PRECONDITION when the data cannot be trained as it is.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        invalid_argument: bool = False,
        code: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code or ("INVALID_ARGUMENT" if invalid_argument else "FAILED_PRECONDITION")
        # ErrorInfo metadata: the same keys the other services use for the same thing.
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class TaskDecision:
    task: Task
    reason: str
    # Classification: the labels in model order (typed: str, bool, int or float).
    class_labels: tuple[Any, ...] = ()

    @property
    def class_names(self) -> list[str]:
        return [pyfunc_model.label_text(label) for label in self.class_labels]


@dataclass(frozen=True)
class PrimaryMetric:
    """What `champion` is decided on."""

    name: str
    higher_is_better: bool
    # Compared when the primary metric ties.
    tie_break: str | None = None
    tie_break_higher_is_better: bool = False


PRIMARY_METRICS = {
    Task.BINARY: PrimaryMetric("roc_auc", True, "log_loss", False),
    Task.MULTICLASS: PrimaryMetric("macro_f1", True, "log_loss", False),
    Task.REGRESSION: PrimaryMetric("rmse", False, "mae", False),
}


def target_present(values: pd.Series[Any]) -> pd.Series[Any]:
    """Rows whose target is there: not null, and not blank text."""
    present = values.notna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        blank = [level for level in values.cat.categories if not str(level).strip()]
        return present & ~values.isin(blank) if blank else present
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        text = values.astype("string")
        present &= text.str.strip().ne("").fillna(False).astype(bool)
    return present


def decide_task(
    values: pd.Series[Any], column_type: ColumnType, requested: Task, max_classes: int
) -> TaskDecision:
    """Which task to train, and why, from the target's non-missing values."""
    if column_type in (ColumnType.DATE, ColumnType.TIMESTAMP):
        raise TrainingFailure(
            reasons.TARGET_UNSUPPORTED_TYPE,
            f"the target is a {column_type.value.lower()} column; predict a number or a label",
            invalid_argument=True,
        )
    numeric = column_type in (ColumnType.INTEGER, ColumnType.FLOAT)
    if numeric:
        values = values.astype("float64")
    distinct = np.sort(pd.unique(values.to_numpy())) if numeric else _sorted_labels(values)
    if len(distinct) < 2:
        raise TrainingFailure(
            reasons.TARGET_CONSTANT,
            f"the target has a single value ({_label_repr(distinct[0])}); nothing to learn",
        )
    if requested == Task.REGRESSION:
        if not numeric:
            raise TrainingFailure(
                reasons.TARGET_NOT_NUMERIC,
                f"REGRESSION needs a numeric target; this one holds {column_type.value.lower()} "
                "values (use AUTO, BINARY or MULTICLASS)",
                invalid_argument=True,
            )
        return TaskDecision(Task.REGRESSION, "REGRESSION requested; numeric target")
    labels = tuple(_typed_label(value, numeric) for value in distinct)
    count = len(labels)
    kind = "numeric" if numeric else f"{column_type.value.lower()}"
    if requested == Task.BINARY:
        if count != 2:
            raise _mismatch(f"BINARY needs exactly 2 classes; the target has {count}")
        return TaskDecision(Task.BINARY, f"BINARY requested; 2 {kind} labels", labels)
    if requested == Task.CLASSIFICATION:
        if count == 2:
            return TaskDecision(Task.BINARY, f"CLASSIFICATION: 2 {kind} labels → BINARY", labels)
        _check_class_count(count, max_classes)
        return TaskDecision(
            Task.MULTICLASS, f"CLASSIFICATION: {count} {kind} labels → MULTICLASS", labels
        )
    if requested == Task.MULTICLASS:
        if count < 3:
            raise _mismatch("MULTICLASS needs 3 or more classes; the target has 2 (use BINARY)")
        _check_class_count(count, max_classes)
        return TaskDecision(Task.MULTICLASS, f"MULTICLASS requested; {count} {kind} labels", labels)
    return _auto_task(distinct, labels, numeric, kind, max_classes)


def _auto_task(
    distinct: np.ndarray[Any, Any],
    labels: tuple[Any, ...],
    numeric: bool,
    kind: str,
    max_classes: int,
) -> TaskDecision:
    count = len(labels)
    if count == 2:
        return TaskDecision(Task.BINARY, f"AUTO: 2 distinct {kind} labels → BINARY", labels)
    if not numeric:
        _check_class_count(count, max_classes)
        return TaskDecision(
            Task.MULTICLASS, f"AUTO: {count} distinct {kind} labels → MULTICLASS", labels
        )
    whole = bool(np.all(np.mod(distinct, 1) == 0))
    if whole and count <= MAX_NUMERIC_CLASSES:
        return TaskDecision(
            Task.MULTICLASS,
            f"AUTO: numeric target with {count} distinct whole values "
            f"(at most {MAX_NUMERIC_CLASSES}) → MULTICLASS",
            labels,
        )
    why = (
        f"{count} distinct values (more than {MAX_NUMERIC_CLASSES})"
        if whole
        else "fractional values"
    )
    return TaskDecision(Task.REGRESSION, f"AUTO: numeric target with {why} → REGRESSION")


def _mismatch(message: str) -> TrainingFailure:
    return TrainingFailure(reasons.TASK_TARGET_MISMATCH, message, invalid_argument=True)


def _check_class_count(count: int, max_classes: int) -> None:
    if count > max_classes:
        raise TrainingFailure(
            reasons.TARGET_TOO_MANY_CLASSES,
            f"the target has {count} classes; at most {max_classes} are supported "
            "(is it an identifier, or a number to predict with REGRESSION?)",
        )


def _sorted_labels(values: pd.Series[Any]) -> np.ndarray[Any, Any]:
    unique = values.dropna().unique()
    if isinstance(values.dtype, pd.CategoricalDtype):
        unique = np.asarray(unique.astype(object))
    return np.asarray(sorted(unique, key=lambda value: (str(type(value)), value)), dtype=object)


def _typed_label(value: Any, numeric: bool) -> Any:
    if numeric:
        number = float(value)
        return int(number) if number.is_integer() else number
    if isinstance(value, bool | np.bool_):
        return bool(value)
    return str(value)


def json_label(label: Any) -> Any:
    return label.item() if isinstance(label, np.generic) else label


def _label_repr(value: Any) -> str:
    return pyfunc_model.label_text(_typed_label(value, isinstance(value, float | np.floating)))


def encode_target(values: pd.Series[Any], decision: TaskDecision) -> np.ndarray[Any, Any]:
    """Regression: float values. Classification: the class index of each row."""
    if decision.task == Task.REGRESSION:
        return values.to_numpy(dtype="float64")
    labels = decision.class_labels
    if isinstance(labels[0], int | float) and not isinstance(labels[0], bool):
        return np.searchsorted(np.asarray(labels, dtype="float64"), values.astype("float64"))
    keys = [pyfunc_model.label_text(label) for label in labels]
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Map the few categories to class indices, then every row by its code.
        position = {key: index for index, key in enumerate(keys)}
        lookup = np.array([position[_label_key(level)] for level in values.cat.categories])
        return np.asarray(lookup[values.cat.codes.to_numpy()], dtype="int64")
    if pd.api.types.infer_dtype(values, skipna=True) != "string":
        values = values.astype("object").map(_label_key)
    return np.asarray(pd.Categorical(values, categories=keys).codes, dtype="int64")


def _label_key(value: Any) -> str:
    return pyfunc_model.label_text(bool(value) if isinstance(value, np.bool_) else value)


def check_class_sizes(labels: np.ndarray[Any, Any], decision: TaskDecision, min_rows: int) -> None:
    check_class_counts(
        np.bincount(labels, minlength=len(decision.class_labels)), decision, min_rows
    )


def check_class_counts(counts: Any, decision: TaskDecision, min_rows: int) -> None:
    """Rows per class (in the decision's class order) against the minimum."""
    small = [
        f"{name} ({count} rows)"
        for name, count in zip(decision.class_names, counts, strict=True)
        if count < min_rows
    ]
    if small:
        raise TrainingFailure(
            reasons.TARGET_CLASS_TOO_SMALL,
            f"every class needs at least {min_rows} rows to be trained and "
            f"validated; too few: {', '.join(small)}",
        )
