"""`modelyard`: the platform from a terminal, through the REST gateway.

Set MODELYARD_URL and MODELYARD_TOKEN (what `make up` prints), then:

    modelyard datasets upload iris.csv
    modelyard train <dataset-id> --target species --wait
    modelyard predict iris-species@champion new_rows.csv -o scored.csv

Every command takes `--output json` for scripts. Exit codes: 0 ok, 1 unexpected
error, 2 usage, 3 not found, 4 invalid request (bad argument, failed precondition,
limit), 5 authentication, 6 gateway or service unavailable / timed out, 7 the job
FAILED, 8 the job was CANCELLED, 130 interrupted.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from modelyard_client.api import FINAL_STATES, Client, Json, ModelyardError

EXIT_ERROR, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_AUTH, EXIT_UNAVAILABLE = 1, 3, 4, 5, 6
EXIT_JOB_FAILED, EXIT_JOB_CANCELLED, EXIT_INTERRUPTED = 7, 8, 130
EXIT_BY_STATUS = {
    "NOT_FOUND": EXIT_NOT_FOUND,
    "INVALID_ARGUMENT": EXIT_INVALID,
    "FAILED_PRECONDITION": EXIT_INVALID,
    "OUT_OF_RANGE": EXIT_INVALID,
    "ALREADY_EXISTS": EXIT_INVALID,
    "RESOURCE_EXHAUSTED": EXIT_INVALID,
    "UNAUTHENTICATED": EXIT_AUTH,
    "PERMISSION_DENIED": EXIT_AUTH,
    "UNAVAILABLE": EXIT_UNAVAILABLE,
    "DEADLINE_EXCEEDED": EXIT_UNAVAILABLE,
}
PREDICT_BATCH_ROWS = 1000


class Output(StrEnum):
    table = "table"
    json = "json"


class Task(StrEnum):
    AUTO = "AUTO"
    BINARY = "BINARY"
    MULTICLASS = "MULTICLASS"
    REGRESSION = "REGRESSION"


class Settings:
    """Options every command shares, set by the top-level callback."""

    url: str | None = None
    token: str | None = None
    output: Output = Output.table


settings = Settings()
stdout = Console()
stderr = Console(stderr=True)

app = typer.Typer(
    help="The modelyard platform from a terminal, through its REST gateway "
    "(MODELYARD_URL, MODELYARD_TOKEN).",
    epilog="Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 not found, 4 invalid request, "
    "5 authentication, 6 unavailable or timed out, 7 job FAILED, 8 job CANCELLED, 130 interrupted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="Upload, inspect and delete datasets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Follow and control training jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models and their versions.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")


@app.callback()
def common_options(
    url: Annotated[
        str | None, typer.Option(envvar="MODELYARD_URL", help="Gateway URL.", show_default=False)
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="MODELYARD_TOKEN", help="Bearer token.", show_default=False)
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-O", help="table or json.")] = Output.table,
) -> None:
    settings.url, settings.token, settings.output = url, token, output


def client() -> Client:
    return Client(settings.url, settings.token)


def fail(error: ModelyardError) -> NoReturn:
    if settings.output is Output.json:
        payload = {
            "error": {"status": error.status, "reason": error.reason, "message": error.message}
        }
        print(json.dumps(payload), file=sys.stderr)
    else:
        stderr.print(f"[bold red]error[/]: {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BY_STATUS.get(error.status, EXIT_ERROR))


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# -- datasets ------------------------------------------------------------------------


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option(help="Display name (default: file name).")] = None,
    delimiter: Annotated[str | None, typer.Option(help="Field delimiter (default ',').")] = None,
    no_header: Annotated[bool, typer.Option("--no-header", help="First row is data.")] = False,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
) -> None:
    """Upload a CSV file, with a progress bar in bytes."""
    size = file.stat().st_size
    with client() as api, _transfer_progress(enabled=settings.output is Output.table) as progress:
        task = progress.add_task(f"upload {file.name}", total=size)
        try:
            dataset = api.upload_dataset(
                file,
                name,
                delimiter=delimiter,
                has_header=False if no_header else None,
                request_id=request_id,
                on_progress=lambda sent: progress.advance(task, sent),
            )
        except ModelyardError as error:
            progress.stop()
            fail(error)
    show_dataset(dataset)


@datasets_app.command("list")
def datasets_list(
    name_contains: Annotated[str | None, typer.Option(help="Filter by display name.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """List datasets, newest first."""
    with client() as api:
        rows = _take(api.list_datasets(name_contains), limit)
    if settings.output is Output.json:
        return emit_json(rows)
    table = Table("dataset id", "name", "state", "rows", "columns", "size", "created")
    for d in rows:
        table.add_row(
            d["datasetId"],
            d.get("displayName", ""),
            d.get("state", ""),
            d.get("rowCount", "0"),
            str(len(d.get("columns", []))),
            _bytes(int(d.get("sizeBytes", 0))),
            d.get("createTime", ""),
        )
    stdout.print(table)


@datasets_app.command("show")
def datasets_show(dataset_id: str) -> None:
    """A dataset with its schema and the profile of every column."""
    with client() as api:
        show_dataset(_call(api.get_dataset, dataset_id))


@datasets_app.command("delete")
def datasets_delete(dataset_id: str) -> None:
    """Delete a dataset and its stored files."""
    with client() as api:
        _call(api.delete_dataset, dataset_id)
    if settings.output is Output.json:
        return emit_json({"deleted": dataset_id})
    stdout.print(f"deleted {dataset_id}")


@datasets_app.command("download")
def datasets_download(
    dataset_id: str,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the CSV.")],
) -> None:
    """Download the original CSV."""
    with client() as api:
        written = _call(api.download_dataset, dataset_id, out)
    if settings.output is Output.json:
        return emit_json({"datasetId": dataset_id, "path": str(out), "bytes": written})
    stdout.print(f"wrote {_bytes(written)} to {out}")


def show_dataset(dataset: Json) -> None:
    if settings.output is Output.json:
        return emit_json(dataset)
    stdout.print(
        f"[bold]{dataset['datasetId']}[/]  {dataset.get('displayName', '')}  "
        f"{dataset.get('state', '')}  {dataset.get('rowCount', 0)} rows  "
        f"{_bytes(int(dataset.get('sizeBytes', 0)))}  sha256 {dataset.get('sha256', '')[:12]}…"
    )
    table = Table("column", "type", "nulls", "distinct", "min", "max", "mean", "std", "top values")
    for column in dataset.get("columns", []):
        profile = column.get("profile", {})
        numeric = profile.get("numeric", {})
        distinct = str(profile.get("distinctCount", "0"))
        if profile.get("distinctCountEstimated"):
            distinct = "~" + distinct
        kind = column.get("dataType", "") + (" (id-like)" if column.get("idLike") else "")
        top = ", ".join(
            f"{v.get('value')} ({v.get('count')})" for v in profile.get("topValues", [])[:3]
        )
        table.add_row(
            column["name"],
            kind,
            str(profile.get("nullCount", "0")),
            distinct,
            _number(numeric.get("min", profile.get("minValue"))),
            _number(numeric.get("max", profile.get("maxValue"))),
            _number(numeric.get("mean")),
            _number(numeric.get("std")),
            top,
        )
    stdout.print(table)


# -- training --------------------------------------------------------------------------


@app.command("train")
def train(
    dataset_id: Annotated[str, typer.Argument(help="The dataset to train on.")],
    target: Annotated[str, typer.Option(help="The column to predict.")],
    task: Annotated[Task, typer.Option(help="Kind of model.")] = Task.AUTO,
    param: Annotated[
        list[str] | None, typer.Option(help="LightGBM parameter override k=v (repeatable).")
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    max_run_seconds: Annotated[float | None, typer.Option(help="Longest run time.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end.")] = False,
) -> None:
    """Queue a training job; with --wait, follow it with a progress bar."""
    params = dict(_key_value(p) for p in param or [])
    with client() as api:
        job = _call(
            api.create_training_job,
            dataset_id,
            target,
            task=task.value,
            params=params,
            registered_model_name=model_name,
            request_id=request_id,
            max_run_duration_seconds=max_run_seconds,
        )
        if wait:
            job = follow(api, job["jobId"])
    finish_job(job, waited=wait)


def follow(api: Client, job_id: str) -> Json:
    """Watch a job to its end: state lines, and a bar of boosting iterations."""
    quiet = settings.output is Output.json
    job: Json = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metric]}"),
        TimeElapsedColumn(),
        console=stderr,
        disable=quiet,
        transient=False,
    ) as progress:
        bar = progress.add_task("training", total=None, metric="")
        state = ""
        try:
            for job in api.watch_training_job(job_id):
                if job.get("state") != state:
                    state = job.get("state", "")
                    progress.console.print(f"{job_id}  {state}")
                _advance(progress, bar, job.get("progress", {}))
                if state in FINAL_STATES:
                    break
        except ModelyardError as error:
            if error.http_status in (0, 404, 501):
                return api.wait_for_training_job(job_id)  # no stream through here: poll
            progress.stop()
            fail(error)
    if job.get("state") not in FINAL_STATES:  # the stream ended early: ask for the truth
        job = _call(api.get_training_job, job_id)
    return job


def _advance(progress: Progress, bar: Any, training: Json) -> None:
    if not training:
        return
    metric = ""
    if training.get("metricName"):
        metric = f"{training['metricName']} {float(training.get('metricValue', 0)):.4f}"
    progress.update(
        bar,
        completed=int(training.get("iteration", 0)),
        total=int(training.get("totalIterations", 0)) or None,
        metric=metric,
    )


def finish_job(job: Json, waited: bool) -> None:
    show_job(job)
    if waited and job.get("state") == "FAILED":
        raise typer.Exit(EXIT_JOB_FAILED)
    if waited and job.get("state") == "CANCELLED":
        raise typer.Exit(EXIT_JOB_CANCELLED)


def show_job(job: Json) -> None:
    if settings.output is Output.json:
        return emit_json(job)
    detection = job.get("taskDetection", {})
    stdout.print(
        f"[bold]{job['jobId']}[/]  {job.get('state')}  dataset {job.get('datasetId')}  "
        f"target {job.get('targetColumn')}  task {detection.get('task') or job.get('task', 'AUTO')}"
        f"  attempt {job.get('attempt', 0)}"
    )
    if detection.get("reason"):
        stdout.print(f"  {detection['reason']}", highlight=False)
    if job.get("error"):
        error = job["error"]
        reasons = [d.get("reason") for d in error.get("details", []) if d.get("reason")]
        stdout.print(f"  [red]error[/]: {reasons[0] if reasons else ''} {error.get('message', '')}")
    if job.get("metrics"):
        table = Table("metric", "value")
        for name, value in sorted(job["metrics"].items()):
            table.add_row(name, f"{float(value):.4f}")
        stdout.print(table)
    run = job.get("mlflow", {})
    if run.get("registeredModelName"):
        champion = "  (champion)" if run.get("promotedToChampion") else ""
        stdout.print(
            f"  model {run['registeredModelName']} version "
            f"{run.get('registeredModelVersion')}{champion}"
        )
    if run.get("runUrl"):
        stdout.print(f"  MLflow run {run['runUrl']}", highlight=False)


# -- jobs --------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only jobs on this dataset.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """List training jobs, newest first."""
    with client() as api:
        rows = _take(api.list_training_jobs(state and state.upper(), dataset), limit)
    if settings.output is Output.json:
        return emit_json(rows)
    table = Table("job id", "state", "dataset", "target", "task", "primary metric", "created")
    for job in rows:
        metrics = job.get("metrics", {})
        primary = next(
            (
                f"{k} {float(metrics[k]):.4f}"
                for k in ("roc_auc", "macro_f1", "rmse")
                if k in metrics
            ),
            "",
        )
        table.add_row(
            job["jobId"],
            job.get("state", ""),
            job.get("datasetId", ""),
            job.get("targetColumn", ""),
            job.get("taskDetection", {}).get("task", job.get("task", "")),
            primary,
            job.get("createTime", ""),
        )
    stdout.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    """One job: state, metrics, MLflow run and model version."""
    with client() as api:
        show_job(_call(api.get_training_job, job_id))


@jobs_app.command("watch")
def jobs_watch(job_id: str) -> None:
    """Follow a job to its end with a progress bar."""
    with client() as api:
        finish_job(follow(api, job_id), waited=True)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a job (at once when queued, at the next iteration when running)."""
    with client() as api:
        show_job(_call(api.cancel_training_job, job_id))


# -- models ------------------------------------------------------------------------------


@models_app.command("list")
def models_list(limit: Annotated[int, typer.Option(help="At most this many.")] = 50) -> None:
    """Registered models with their latest and champion versions."""
    with client() as api:
        rows = _take(api.list_models(), limit)
    if settings.output is Output.json:
        return emit_json(rows)
    table = Table("model", "latest", "champion", "updated")
    for model in rows:
        table.add_row(
            model["name"],
            str(model.get("latestVersion", "")),
            str(model.get("championVersion", "") or "—"),
            model.get("updateTime", ""),
        )
    stdout.print(table)


@models_app.command("show")
def models_show(name: str) -> None:
    """A model's versions with their metrics; the champion is marked."""
    with client() as api:
        model = _call(api.get_model, name)
    if settings.output is Output.json:
        return emit_json(model)
    stdout.print(
        f"[bold]{model['name']}[/]  champion: version {model.get('championVersion') or '—'}"
    )
    table = Table("version", "aliases", "job", "task", "metrics", "created")
    for version in model.get("versions", []):
        metrics = ", ".join(
            f"{k} {float(v):.4f}" for k, v in sorted(version.get("metrics", {}).items())
        )
        table.add_row(
            str(version.get("version")),
            ", ".join(version.get("aliases", [])),
            version.get("jobId", ""),
            version.get("task", ""),
            metrics,
            version.get("createTime", ""),
        )
    stdout.print(table)


@app.command("predict")
def predict(
    model: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME:VERSION.")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write scored CSV here.")] = None,
) -> None:
    """Score the rows of a CSV file; writes them back with predictions."""
    name, version, alias = _model_reference(model)
    scored: list[dict[str, Any]] = []
    with client() as api, file.open(newline="") as handle:
        for batch in _batches(csv.DictReader(handle), PREDICT_BATCH_ROWS):
            answer = _call(
                api.predict, name, [_typed(row) for row in batch], version=version, alias=alias
            )
            classes = answer.get("classNames", [])
            for row, prediction in zip(batch, answer.get("predictions", []), strict=True):
                scored.append({**row, "prediction": prediction.get("value")})
                for label, p in zip(classes, prediction.get("probabilities", []), strict=False):
                    scored[-1][f"probability_{label}"] = p
    if settings.output is Output.json:
        return emit_json(scored)
    if out is None:
        _write_csv(sys.stdout, scored)
        return
    with out.open("w", newline="") as handle:
        _write_csv(handle, scored)
    stderr.print(f"scored {len(scored)} rows with {name} → {out}")


# -- helpers -----------------------------------------------------------------------------


def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except ModelyardError as error:
        fail(error)


def _take(rows: Iterator[Json], limit: int) -> list[Json]:
    taken: list[Json] = []
    try:
        for row in rows:
            taken.append(row)
            if len(taken) >= limit:
                break
    except ModelyardError as error:
        fail(error)
    return taken


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected k=v, got {text!r}", param_hint="--param")
    return key.strip(), value.strip()


def _model_reference(text: str) -> tuple[str, int | None, str | None]:
    if "@" in text:
        name, alias = text.split("@", 1)
        return name, None, alias
    if ":" in text:
        name, version = text.rsplit(":", 1)
        if not version.isdigit():
            raise typer.BadParameter(f"version must be a number, got {version!r}")
        return name, int(version), None
    return text, None, None


def _typed(row: dict[str, str]) -> dict[str, Any]:
    """CSV text to JSON values: empty → null, numbers → numbers, the rest as text."""
    typed: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or value == "":
            typed[key] = None
            continue
        try:
            number = float(value)
        except ValueError:
            typed[key] = value
            continue
        typed[key] = int(number) if number.is_integer() and "." not in value else number
    return typed


def _batches(rows: Iterator[dict[str, str]], size: int) -> Iterator[list[dict[str, str]]]:
    batch: list[dict[str, str]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_csv(handle: Any, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(handle, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _transfer_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=stderr,
        disable=not enabled,
    )


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _number(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float | int):
        return f"{value:.4g}"
    return str(value)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
