"""The evaluation report's charts (PNG, matplotlib's Agg canvas) and its MLflow files.

`write_report(report, directory)` writes `evaluation/report.json` (the report
without its images) and one PNG per chart, and puts the PNGs in the report, so
that the job event carries the same images the MLflow run holds.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from modelyard.jobs.v1 import training_job_pb2

REPORT_DIR = "evaluation"
FIGURE_SIZE = (5.0, 4.0)
DPI = 72


def write_report(report: training_job_pb2.EvaluationReport, directory: Path) -> None:
    folder = directory / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    del report.charts[:]
    for name, draw in _charts(report):
        png = _png(draw)
        (folder / f"{name}.png").write_bytes(png)
        report.charts.add(name=name, png=png)
    without_images = training_job_pb2.EvaluationReport()
    without_images.CopyFrom(report)
    del without_images.charts[:]
    (folder / "report.json").write_text(json_format.MessageToJson(without_images, indent=2))


def _charts(report: training_job_pb2.EvaluationReport) -> list[tuple[str, Any]]:
    charts: list[tuple[str, Any]] = []
    if report.confusion_matrix:
        charts.append(("confusion_matrix", lambda axes: _confusion(axes, report)))
    curves = (
        ("roc_curve", "ROC curve", "false positive rate", "true positive rate", True),
        ("precision_recall_curve", "Precision-recall", "recall", "precision", False),
        ("calibration_curve", "Calibration", "mean predicted probability", "observed", True),
        ("predicted_vs_actual", "Predicted vs actual", "predicted", "actual", False),
        ("residuals", "Residuals", "predicted", "actual - predicted", False),
    )
    for name, title, x_label, y_label, diagonal in curves:
        curve = getattr(report, name)
        if report.HasField(name) and curve.x:
            charts.append(
                (
                    name,
                    lambda axes, c=curve, t=title, xl=x_label, yl=y_label, d=diagonal: _curve(
                        axes, c, t, xl, yl, d, scatter=t.startswith(("Predicted", "Residuals"))
                    ),
                )
            )
    return charts


def _png(draw: Any) -> bytes:
    from matplotlib.figure import Figure  # the Agg canvas: no display, no pyplot state

    figure = Figure(figsize=FIGURE_SIZE)
    draw(figure.add_subplot())
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _confusion(axes: Any, report: training_job_pb2.EvaluationReport) -> None:
    matrix = [list(row.counts) for row in report.confusion_matrix]
    axes.imshow(matrix, cmap="Blues")
    names = list(report.class_names)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title("Confusion matrix")
    if len(names) <= 12:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                axes.text(j, i, str(count), ha="center", va="center", fontsize=8)


def _curve(
    axes: Any,
    curve: training_job_pb2.EvaluationCurve,
    title: str,
    x_label: str,
    y_label: str,
    diagonal: bool,
    scatter: bool,
) -> None:
    if scatter:
        axes.scatter(curve.x, curve.y, s=6, alpha=0.5, color="#3b7dd8")
    else:
        axes.plot(curve.x, curve.y, color="#3b7dd8", marker="o" if len(curve.x) <= 10 else None)
    if diagonal:
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    if title == "Residuals":
        axes.axhline(0, linestyle="--", color="grey", linewidth=1)
    if title == "Predicted vs actual" and curve.x:
        low, high = min(*curve.x, *curve.y), max(*curve.x, *curve.y)
        axes.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(f"{title} (area {curve.area:.3f})" if curve.area else title)
