"""What people see: the gateway's resources as rich tables and label-value cards.

Pure functions from proto3 JSON (lowerCamelCase keys, int64 as strings, enums
as names) to rich renderables; the CLI decides where they go. Every text that
comes from the platform is markup-escaped: a column named `[bold]` stays text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.filesize import decimal as human_bytes
from rich.markup import escape
from rich.table import Table

from modelyard_client.api import Json, reason_of, status_name

# The metric that decides the `champion` alias, and its tie-break, by task.
PRIMARY_METRICS = {
    "BINARY": ("roc_auc", "log_loss"),
    "MULTICLASS": ("macro_f1", "log_loss"),
    "REGRESSION": ("rmse", "mae"),
}
METRIC_MEANINGS = {
    "accuracy": "share of validation rows predicted right",
    "f1": "balance of precision and recall (higher is better)",
    "macro_f1": "F1 averaged over the classes (higher is better)",
    "roc_auc": "ranking quality: 0.5 is chance, 1 is perfect",
    "log_loss": "penalty for confident mistakes (lower is better)",
    "precision": "of the rows predicted positive, the share right",
    "recall": "of the positive rows, the share found",
    "rmse": "typical error, in the target's unit (lower is better)",
    "mae": "mean absolute error (lower is better)",
    "r2": "share of the variance explained (1 is perfect)",
    "mse": "mean squared error (lower is better)",
}
STATE_STYLES = {
    "READY": "green",
    "SUCCEEDED": "green",
    "FAILED": "bold red",
    "CANCELLED": "yellow",
    "CANCELLING": "yellow",
    "RUNNING": "cyan",
    "QUEUED": "blue",
}


# -- datasets ------------------------------------------------------------------------


def datasets_table(datasets: list[Json]) -> Table:
    table = listing(
        "dataset id", "name", "state", "rows", "columns", "size", "created (UTC)", whole=(0, 6)
    )
    for d in datasets:
        table.add_row(
            d["datasetId"],
            escape(d.get("displayName", "")),
            state(d.get("state", "")),
            count(d.get("rowCount")),
            str(len(d.get("columns", []))),
            human_bytes(int(d.get("sizeBytes", 0))),
            when(d.get("createTime"), seconds=False),
        )
    return table


def dataset_card(dataset: Json) -> Table:
    rows, columns = int(dataset.get("rowCount", 0)), len(dataset.get("columns", []))
    size = human_bytes(int(dataset.get("sizeBytes", 0)))
    lines = card()
    lines.add_row("dataset", f"[bold]{dataset['datasetId']}[/]")
    name = escape(dataset.get("displayName", ""))
    version = int(dataset.get("version", 0))
    lines.add_row("name", f"{name} [dim]version {version}[/]" if version else name)
    lines.add_row("state", state(dataset.get("state", "")))
    lines.add_row("size", f"{rows:,} rows, {columns} columns, {size}")
    if dataset.get("sourceFormat"):
        lines.add_row("format", source_format(dataset))
    lines.add_row("sha256", dataset.get("sha256", ""))
    lines.add_row("created", when(dataset.get("createTime")) + " UTC")
    if dataset.get("error"):
        lines.add_row("error", f"[red]{escape(status_text(dataset['error']))}[/]")
    return lines


_FORMATS = {"FORMAT_DELIMITED_TEXT": "text", "FORMAT_PARQUET": "Parquet", "FORMAT_XLSX": "XLSX"}
_DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
_REPAIRS = {
    "REASON_BLANK_NAME": "blank name",
    "REASON_DUPLICATE_NAME": "repeated name",
    "REASON_EMPTY_TRAILING_COLUMN": "empty column after a trailing delimiter: dropped",
}


def source_format(dataset: Json) -> str:
    """What the uploaded file was: `gzip text, UTF-8, comma-separated`, `XLSX, sheet "x"`."""
    source = dataset.get("sourceFormat") or {}
    kind = _FORMATS.get(source.get("format", ""), source.get("format", "").lower())
    parts = [kind]
    compression = source.get("compression", "")
    if compression not in ("", "COMPRESSION_NONE"):
        parts[0] = f"{compression.removeprefix('COMPRESSION_').lower()}-compressed {kind}"
    if source.get("encoding"):
        parts.append(escape(source["encoding"]))
    delimiter = (dataset.get("csvOptions") or {}).get("delimiter", "")
    if kind == "text" and delimiter:
        parts.append(f"{_DELIMITERS.get(delimiter, repr(delimiter))}-separated")
    if source.get("sheet"):
        parts.append(f"sheet {escape(repr(source['sheet']))}")
    return ", ".join(parts)


def repairs_table(dataset: Json) -> Table:
    """What was changed in the header so that every column has a unique name."""
    table = listing("column", "in the file", "now", "why", title="header repairs", whole=(0,))
    for repair in dataset.get("headerRepairs", []):
        table.add_row(
            str(repair.get("columnIndex", "")),
            escape(repr(repair.get("originalName", ""))),
            escape(repair.get("newName", "")) or "[dim](dropped)[/]",
            _REPAIRS.get(repair.get("reason", ""), repair.get("reason", "")),
        )
    return table


def dataset_versions_table(datasets: list[Json]) -> Table:
    table = listing("version", "dataset id", "rows", "size", "created (UTC)", whole=(0, 1, 4))
    for d in datasets:
        table.add_row(
            str(d.get("version", "")),
            d["datasetId"],
            count(d.get("rowCount")),
            human_bytes(int(d.get("sizeBytes", 0))),
            when(d.get("createTime"), seconds=False),
        )
    return table


def profile_table(dataset: Json) -> Table:
    """One line per column: its type, how much is missing, and what it holds."""
    rows = int(dataset.get("rowCount", 0))
    table = listing(
        "column", "type", "missing", "distinct", "summary", title="profile", whole=(0, 1, 2, 3)
    )
    for column in dataset.get("columns", []):
        profile = column.get("profile") or {}
        kind = column.get("dataType", "").lower()
        if column.get("rowNumber"):
            kind += " [dim](row number)[/]"
        elif column.get("idLike"):
            kind += " [dim](id-like)[/]"
        if profile.get("dateFormat") and profile["dateFormat"] != "ISO 8601":
            kind += f" [dim]{escape(profile['dateFormat'])}[/]"
        nulls = int(profile.get("nullCount", 0))
        missing = f"{nulls:,}" + (f" ({nulls / rows:.0%})" if nulls and rows else "")
        distinct = count(profile.get("distinctCount", 0))
        if profile.get("distinctCountEstimated"):
            distinct = "~" + distinct
        table.add_row(escape(column["name"]), kind, missing, distinct, column_summary(profile))
    return table


def column_summary(profile: Json) -> str:
    """Range and mean for numbers, the most frequent values for text, a range for dates."""
    numeric = profile.get("numeric")
    if numeric:
        return (
            f"min {number(numeric.get('min'))} · max {number(numeric.get('max'))} · "
            f"mean {number(numeric.get('mean'))} · std {number(numeric.get('std'))}"
        )
    if profile.get("topValues"):
        top = ", ".join(
            f"{escape(str(v.get('value')))} ({count(v.get('count'))})"
            for v in profile["topValues"][:4]
        )
        return f"top: {top}"
    if profile.get("minValue") or profile.get("maxValue"):
        return f"{escape(profile.get('minValue', ''))} … {escape(profile.get('maxValue', ''))}"
    return ""


# -- training jobs -----------------------------------------------------------------------


def jobs_table(jobs: list[Json]) -> Table:
    table = listing("job id", "state", "target", "score", "model", "created (UTC)", whole=(0, 5))
    for job in jobs:
        run = job.get("mlflow") or {}
        model = ""
        if run.get("registeredModelName"):
            model = f"{run['registeredModelName']} v{run.get('registeredModelVersion')}"
        table.add_row(
            job["jobId"],
            state(job.get("state", "")),
            escape(job.get("targetColumn", "")),
            primary_score(job.get("metrics") or {}, task_of(job)),
            escape(model),
            when(job.get("createTime"), seconds=False),
        )
    return table


def job_card(job: Json) -> Table:
    lines = card()
    lines.add_row("job", f"[bold]{job['jobId']}[/]")
    details = [f"attempt {job['attempt']}" if int(job.get("attempt", 0)) else "", took(job)]
    shown = ", ".join(d for d in details if d)
    lines.add_row("state", state(job.get("state", "")) + (f"  [dim]{shown}[/]" if shown else ""))
    lines.add_row("dataset", job.get("datasetId", ""))
    lines.add_row("target", escape(job.get("targetColumn", "")))
    detection = job.get("taskDetection") or {}
    lines.add_row("task", task_detection(detection) if detection.get("task") else job.get("task"))
    if job.get("params"):
        lines.add_row("params", escape(", ".join(f"{k}={v}" for k, v in job["params"].items())))
    if job.get("error"):
        lines.add_row("error", f"[red]{escape(status_text(job['error']))}[/]")
    if job.get("summary"):
        lines.add_row("data", data_summary(job["summary"]))
    search = job.get("search") or {}
    if search:
        lines.add_row("search", search_request(search))
    outcome = (job.get("summary") or {}).get("search") or {}
    if outcome:
        lines.add_row("searched", search_outcome(outcome))
    replay = job.get("replay") or {}
    if replay:
        lines.add_row("replay of", replay_text(job, replay))
    if (job.get("summary") or {}).get("modelSha256"):
        lines.add_row("model sha256", job["summary"]["modelSha256"])
    run = job.get("mlflow") or {}
    if run.get("registeredModelName"):
        champion = ", now the champion" if run.get("promotedToChampion") else ""
        version = run.get("registeredModelVersion")
        lines.add_row("model", f"{escape(run['registeredModelName'])} version {version}{champion}")
    if run.get("runUrl"):
        lines.add_row("MLflow run", escape(run["runUrl"]))
    lines.add_row("created", when(job.get("createTime")) + " UTC")
    return lines


def scoring_card(job: Json) -> Table:
    """A scoring job: what it scores with, how far it is, where the output is."""
    lines = card()
    lines.add_row("scoring job", f"[bold]{job['jobId']}[/]")
    details = [f"attempt {job['attempt']}" if int(job.get("attempt", 0)) else "", took(job)]
    shown = ", ".join(d for d in details if d)
    lines.add_row("state", state(job.get("state", "")) + (f"  [dim]{shown}[/]" if shown else ""))
    lines.add_row("dataset", job.get("datasetId", ""))
    alias = f" (alias {escape(job['modelAlias'])})" if job.get("modelAlias") else ""
    lines.add_row(
        "model", f"{escape(job.get('modelName', ''))} version {job.get('modelVersion')}{alias}"
    )
    if job.get("passThroughColumns"):
        lines.add_row("pass-through", escape(", ".join(job["passThroughColumns"])))
    progress = job.get("progress") or {}
    if progress:
        lines.add_row("rows", rows_done(progress))
    if job.get("error"):
        lines.add_row("error", f"[red]{escape(status_text(job['error']))}[/]")
    output = job.get("output") or {}
    if output.get("datasetId"):
        lines.add_row(
            "output",
            f"dataset [bold]{output['datasetId']}[/] "
            f"({int(output.get('rowsScored', 0)):,} rows; "
            f"modelyard datasets download {output['datasetId']})",
        )
        lines.add_row("flagged rows", flagged_rows(output))
    lines.add_row("created", when(job.get("createTime")) + " UTC")
    return lines


def flagged_rows(output: Mapping[str, Any]) -> str:
    """How many rows are unlike the training data, and how."""
    kinds = [
        (int(output.get("unseenCategoryRows", 0)), "unseen category"),
        (int(output.get("outOfRangeRows", 0)), "out of range"),
        (int(output.get("allMissingRows", 0)), "all features missing"),
    ]
    detail = ", ".join(f"{count:,} {what}" for count, what in kinds if count)
    return f"{int(output.get('flaggedRows', 0)):,}" + (f" ({detail})" if detail else "")


def rows_done(progress: Mapping[str, Any]) -> str:
    done, total = int(progress.get("rowsDone", 0)), int(progress.get("rowsTotal", 0))
    return f"{done:,}/{total:,} rows" if total else f"{done:,} rows"


def metrics_table(metrics: Mapping[str, Any], task: str) -> Table:
    """The validation metrics, each with what it means; the champion's metric marked."""
    primary = PRIMARY_METRICS.get(task, ("", ""))[0]
    table = listing("metric", "value", "meaning", title="validation metrics", whole=(0, 1))
    for name in sorted(metrics):
        meaning = METRIC_MEANINGS.get(name, "")
        if name == primary:
            meaning += " [bold]· decides the champion[/]"
        table.add_row(name, metric(metrics[name]), meaning)
    return table


def task_detection(detection: Json) -> str:
    reason = detection.get("reason", "")
    return str(detection.get("task")) + (f" [dim]({escape(reason)})[/]" if reason else "")


def data_summary(summary: Json) -> str:
    used, validation = int(summary.get("rowsUsed", 0)), int(summary.get("validationRows", 0))
    text = f"{used:,} rows ({validation:,} for validation)"
    no_target = int(summary.get("rowsDroppedMissingTarget", 0))
    if no_target:
        text += f", {no_target:,} without a target left out"
    text += f"; {len(summary.get('features', []))} features"
    dropped = summary.get("droppedColumns") or []
    if dropped:
        names = ", ".join(f"{escape(d['name'])} ({d.get('reason', '')})" for d in dropped)
        text += f"; not used: {names}"
    return text


def task_of(job: Json) -> str:
    """The task trained (once detected), else the task asked for."""
    return str((job.get("taskDetection") or {}).get("task") or job.get("task", ""))


# -- models ------------------------------------------------------------------------------


def models_table(models: list[Json]) -> Table:
    table = listing("model", "latest", "champion", "champion score", "updated (UTC)", whole=(0, 4))
    for model in models:
        champion = int(model.get("championVersion", 0))
        versions = {int(v.get("version", 0)): v for v in model.get("versions", [])}
        best = versions.get(champion, {})
        table.add_row(
            escape(model["name"]),
            str(model.get("latestVersion", "")),
            str(champion) if champion else "none",
            primary_score(best.get("metrics") or {}, best.get("task", "")),
            when(model.get("updateTime"), seconds=False),
        )
    return table


def model_card(model: Json) -> Table:
    champion = int(model.get("championVersion", 0))
    latest = (model.get("versions") or [{}])[0]
    lines = card()
    lines.add_row("model", f"[bold]{escape(model['name'])}[/]")
    if latest.get("targetColumn"):
        lines.add_row("predicts", f"{escape(latest['targetColumn'])} ({latest.get('task', '')})")
    lines.add_row("champion", f"version {champion}" if champion else "none yet")
    lines.add_row("latest", f"version {model.get('latestVersion', '')}")
    lines.add_row("use it", f"modelyard predict {escape(model['name'])}@champion FILE.csv")
    return lines


def versions_table(model: Json) -> Table:
    table = listing("version", "aliases", "score", "job", "created (UTC)", whole=(0, 3, 4))
    for version in model.get("versions", []):
        table.add_row(
            str(version.get("version")),
            escape(", ".join(version.get("aliases", []))),
            primary_score(version.get("metrics") or {}, version.get("task", "")),
            version.get("jobId", ""),
            when(version.get("createTime"), seconds=False),
        )
    return table


# -- building blocks -----------------------------------------------------------------------


def listing(*headers: str, title: str | None = None, whole: tuple[int, ...] = (0,)) -> Table:
    """A plain table: bold header, one rule, no frame. The `whole` columns (ids,
    times) never wrap, as a cut id cannot be copied; the others fold."""
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        header_style="bold",
        title=title,
        title_justify="left",
        title_style="bold",
    )
    for index, header in enumerate(headers):
        if index in whole:
            table.add_column(header, no_wrap=True)
        else:
            table.add_column(header, overflow="fold", min_width=min(len(header), 9))
    return table


def card() -> Table:
    """Label-value lines, aligned."""
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="dim", no_wrap=True)
    lines.add_column(overflow="fold")
    return lines


def state(name: str) -> str:
    style = STATE_STYLES.get(name)
    return f"[{style}]{name}[/]" if style else name


def status_text(status: Json) -> str:
    """A google.rpc.Status as `FAILED_PRECONDITION TARGET_CONSTANT: the target …`."""
    return f"{status_name(status)} {reason_of(status)}: {status.get('message', '')}"


def primary_score(metrics: Mapping[str, Any], task: str) -> str:
    name = PRIMARY_METRICS.get(task, ("", ""))[0]
    return f"{name} {metric(metrics[name])}" if name in metrics else ""


def metric(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return escape(str(value))  # "NaN", "Infinity"


def number(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return escape(str(value))


def count(value: Any) -> str:
    """An int64 (a string in proto3 JSON) with thousands separators."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return ""


def when(timestamp: str | None, seconds: bool = True) -> str:
    """An RFC 3339 timestamp as `2026-11-26 12:54:49` (or `… 12:54`), in UTC."""
    if not timestamp:
        return ""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return escape(timestamp)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def took(job: Json) -> str:
    """How long a finished job ran."""
    start, end = job.get("startTime"), job.get("endTime")
    if not start or not end:
        return ""
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    if seconds < 60:
        return f"took {seconds:.1f} s"
    return f"took {int(seconds // 60)} min {int(seconds % 60)} s"


def search_request(search: Json) -> str:
    parts = []
    if search.get("budget"):
        parts.append(f"budget {search['budget']}")
    if search.get("maxTrials"):
        parts.append(f"at most {search['maxTrials']} trials")
    return ", ".join(parts)


def search_outcome(outcome: Json) -> str:
    trials, best = int(outcome.get("trials", 0)), int(outcome.get("bestTrial", 0))
    validation = outcome.get("validation", "")
    folds = int(outcome.get("folds", 0))
    repeats = int(outcome.get("foldRepeats", 1))
    how = f"{folds}-fold cross-validation" if validation == "cv" else "holdout"
    if validation == "cv" and repeats > 1:
        how += f", drawn {repeats} times"
    text = (
        f"{trials} trials ({how}), best #{best}, objective {escape(outcome.get('objective', ''))}"
    )
    stopped = outcome.get("stoppedBy", "")
    if stopped == "deadline":
        text += " [yellow](max_run_duration reached: the best model so far was kept)[/]"
    elif stopped:
        text += f" [dim](stopped by {stopped})[/]"
    return text


def replay_text(job: Json, replay: Json) -> str:
    text = str(replay.get("sourceJobId", ""))
    if job.get("state") == "SUCCEEDED":
        matched = replay.get("modelSha256Matches")
        text += " — model sha256 " + ("[green]matches[/]" if matched else "[red]differs[/]")
    return text


def search_progress(progress: Json) -> str:
    """Trial N, best so far, time left: the bar's text while a job searches."""
    trial, done = int(progress.get("trial", 0)), int(progress.get("trialsDone", 0))
    most = int(progress.get("maxTrials", 0))
    text = f"trial {trial}" + (f"/{most}" if most else "") + f" ({done} done)"
    if progress.get("bestMetricName") and "bestMetricValue" in progress:
        text += f", best {escape(progress['bestMetricName'])} {metric(progress['bestMetricValue'])}"
    if progress.get("timeLeft"):
        text += f", {progress['timeLeft']} left"
    return text


def trials_table(trials: list[Json]) -> Table:
    table = listing("#", "state", "metric", "value", "± folds", "objective", "rounds", "time")
    for trial in trials:
        folds = [float(v) for v in trial.get("foldMetricValues") or []]
        spread = ""
        if len(folds) > 1:
            mean = sum(folds) / len(folds)
            spread = metric((sum((v - mean) ** 2 for v in folds) / len(folds)) ** 0.5)
        best = " [green]best so far[/]" if trial.get("bestSoFar") else ""
        table.add_row(
            str(trial.get("number", 0)),
            str(trial.get("state", "")).removeprefix("STATE_").lower() + best,
            escape(trial.get("metricName", "")),
            metric(trial.get("metricValue")) if "metricValue" in trial else "",
            spread,
            escape(trial.get("objective", "")),
            str(trial.get("rounds", "")),
            str(trial.get("duration", "")),
        )
    return table


def report_tables(report: Json) -> list[Table]:
    """A job's evaluation report for the terminal: the confusion matrix (rows actual,
    columns predicted) and per-class metrics, or the residuals' summary."""
    names = [str(name) for name in report.get("classNames", [])]
    rows = int(report.get("validationRows", 0))
    tables: list[Table] = []
    if names:
        matrix = listing(
            "actual \\ predicted",
            *(escape(name) for name in names),
            title=f"confusion matrix ({rows} validation rows)",
        )
        for actual, row in enumerate(report.get("confusionMatrix", [])):
            counts = [int(count) for count in row.get("counts", [])]
            cells = [  # the diagonal, the rows predicted right, stands out
                f"[bold green]{count}[/]" if predicted == actual else str(count)
                for predicted, count in enumerate(counts)
            ]
            matrix.add_row(escape(names[actual]) if actual < len(names) else "", *cells)
        tables.append(matrix)
        per_class = listing("class", "precision", "recall", "f1", "support", title="per class")
        for item in report.get("classMetrics", []):
            per_class.add_row(
                escape(str(item.get("className", ""))),
                metric(item.get("precision", 0.0)),
                metric(item.get("recall", 0.0)),
                metric(item.get("f1", 0.0)),
                str(item.get("support", 0)),
            )
        tables.append(per_class)
    curves = card()
    for key, label in (
        ("rocCurve", "ROC AUC"),
        ("precisionRecallCurve", "average precision"),
    ):
        if "area" in report.get(key, {}):
            curves.add_row(label, metric(report[key]["area"]))
    residuals = report.get("residuals", {}).get("y", [])
    if residuals:
        values = [float(value) for value in residuals]
        mean = sum(values) / len(values)
        curves.add_row("residuals (actual - predicted)", f"{len(values)} rows shown")
        curves.add_row("mean residual", metric(mean))
        curves.add_row("largest |residual|", metric(max(abs(value) for value in values)))
    charts = [str(chart.get("name", "")) for chart in report.get("charts", [])]
    if charts:
        curves.add_row("charts", ", ".join(charts) + " (--charts DIR writes them)")
    tables.append(curves)
    return tables


def estimate_card(quote: Json) -> Table:
    lines = card()
    lines.add_row("dataset", quote.get("datasetId", ""))
    lines.add_row("wall time", str(quote.get("wallTime", "")))
    mib = 1024 * 1024
    peak, limit = int(quote.get("peakMemoryBytes", 0)), int(quote.get("memoryLimitBytes", 0))
    fits = "fits" if quote.get("fitsMemoryLimit") else "[red]exceeds[/]"
    lines.add_row(
        "peak memory", f"{peak / mib:,.0f} MiB ({fits} the limit of {limit / mib:,.0f} MiB)"
    )
    lines.add_row("trials", str(quote.get("trials", 1)))
    lines.add_row("basis", escape(quote.get("basis", "")))
    return lines


def projects_table(projects: list[Json]) -> Table:
    table = listing("project", "name", "created (UTC)", whole=(0, 2))
    for project in projects:
        table.add_row(
            escape(project["projectId"]),
            escape(project.get("displayName", "")),
            when(project.get("createTime"), seconds=False),
        )
    return table


def tokens_table(tokens: list[Json]) -> Table:
    table = listing("token", "role", "name", "expires (UTC)", "revoked (UTC)", whole=(0, 4))
    for token in tokens:
        table.add_row(
            token["tokenId"],
            str(token.get("role", "")).removeprefix("ROLE_").lower(),
            escape(token.get("displayName", "")),
            when(token.get("expireTime"), seconds=False),
            when(token.get("revokeTime"), seconds=False) if token.get("revokeTime") else "",
        )
    return table
