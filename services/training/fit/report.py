"""The evaluation report of a trained model, from its validation rows.

Where the metrics give one number, the report shows where the model goes
wrong: the confusion matrix and per-class precision and recall
(classification), the ROC and precision-recall curves (binary), the calibration
curve (classification), residuals and predicted against actual values
(regression). Curves are thinned to at most `MAX_POINTS` points so that a report
stays a few kilobytes whatever the row count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from modelyard.jobs.v1 import training_job_pb2
from services.training.model import pyfunc_model
from services.training.model.targets import Task

MAX_POINTS = 1000
CALIBRATION_BINS = 10
TASK_ENUMS = {
    Task.BINARY: training_job_pb2.TrainingJob.Task.BINARY,
    Task.MULTICLASS: training_job_pb2.TrainingJob.Task.MULTICLASS,
    Task.REGRESSION: training_job_pb2.TrainingJob.Task.REGRESSION,
}

Report = training_job_pb2.EvaluationReport
Curve = training_job_pb2.EvaluationCurve


def evaluation_report(
    task: Task, labels: np.ndarray[Any, Any], raw: np.ndarray[Any, Any], class_names: list[str]
) -> Report:
    """The report of predictions `raw` (as `booster.predict` gives them) against `labels`
    (encoded: class indices, or values for regression)."""
    report = Report(task=TASK_ENUMS[task], validation_rows=len(labels))
    if task == Task.REGRESSION:
        predicted = np.asarray(raw, dtype="float64").reshape(-1)
        actual = np.asarray(labels, dtype="float64")
        rows = _thinned(len(actual))
        report.predicted_vs_actual.CopyFrom(_curve(predicted[rows], actual[rows]))
        report.residuals.CopyFrom(_curve(predicted[rows], (actual - predicted)[rows]))
        return report
    probabilities = pyfunc_model.class_probabilities(
        raw, pyfunc_model.BINARY if task == Task.BINARY else pyfunc_model.MULTICLASS
    )
    predicted_class = probabilities.argmax(axis=1)
    classes = list(range(len(class_names)))
    report.class_names.extend(class_names)
    matrix = skm.confusion_matrix(labels, predicted_class, labels=classes)
    report.confusion_matrix.extend(
        training_job_pb2.ConfusionMatrixRow(counts=[int(c) for c in row]) for row in matrix
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted_class, labels=classes, zero_division=0
    )
    report.class_metrics.extend(
        training_job_pb2.ClassMetrics(
            class_name=name,
            precision=float(precision[k]),
            recall=float(recall[k]),
            f1=float(f1[k]),
            support=int(support[k]),
        )
        for k, name in enumerate(class_names)
    )
    if task == Task.BINARY:
        positive = probabilities[:, 1]
        is_positive = np.asarray(labels) == 1
        if 0 < is_positive.sum() < len(is_positive):  # both classes present
            fpr, tpr, _ = skm.roc_curve(is_positive, positive)
            report.roc_curve.CopyFrom(_curve(fpr, tpr, skm.roc_auc_score(is_positive, positive)))
            precisions, recalls, _ = skm.precision_recall_curve(is_positive, positive)
            report.precision_recall_curve.CopyFrom(
                _curve(recalls, precisions, skm.average_precision_score(is_positive, positive))
            )
        report.calibration_curve.CopyFrom(_calibration(positive, is_positive))
    else:
        confidence = probabilities.max(axis=1)
        report.calibration_curve.CopyFrom(
            _calibration(confidence, predicted_class == np.asarray(labels))
        )
    return report


def _thinned(count: int) -> np.ndarray[Any, Any]:
    """At most MAX_POINTS evenly spaced positions of `count`, the ends included."""
    if count <= MAX_POINTS:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, MAX_POINTS).round().astype(int))


def _curve(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], area: float = 0.0) -> Curve:
    points = _thinned(len(x))
    return Curve(x=x[points].tolist(), y=y[points].tolist(), area=float(area))


def _calibration(probability: np.ndarray[Any, Any], happened: np.ndarray[Any, Any]) -> Curve:
    """Mean predicted probability against observed frequency, in equal-width bins
    (empty bins left out)."""
    bins = np.clip((probability * CALIBRATION_BINS).astype(int), 0, CALIBRATION_BINS - 1)
    x: list[float] = []
    y: list[float] = []
    for index in range(CALIBRATION_BINS):
        members = bins == index
        if members.any():
            x.append(float(probability[members].mean()))
            y.append(float(np.asarray(happened)[members].mean()))
    return Curve(x=x, y=y)
