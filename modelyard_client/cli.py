"""`modelyard`: the platform from a terminal, through the REST gateway.

Set MODELYARD_URL and MODELYARD_TOKEN (what `make up` prints), then:

    modelyard datasets upload iris.csv
    modelyard train <dataset-id> --target species --wait
    modelyard predict iris-species@champion new_rows.csv -o scored.csv

Results go to stdout; progress, state changes and errors to stderr. Every
command takes `--output json` (before or after the command name) for scripts:
the resource exactly as the gateway returns it on stdout, and an error as one
JSON line on stderr.

Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 not found, 4 invalid request
(bad argument, failed precondition, limit), 5 authentication, 6 gateway or
service unavailable / timed out, 7 the job FAILED, 8 the job was CANCELLED,
130 interrupted.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.filesize import decimal as human_bytes
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from modelyard_client import render
from modelyard_client.api import FINAL_STATES, Client, Json, ModelyardError, reason_of, status_name

EXIT_ERROR, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_AUTH, EXIT_UNAVAILABLE = 1, 3, 4, 5, 6
EXIT_JOB_FAILED, EXIT_JOB_CANCELLED, EXIT_INTERRUPTED = 7, 8, 130
EXIT_REPLAY_DIFFERS = 9
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
# Said after the error line, for the mistakes a newcomer makes first.
HINTS = {
    "API_TOKEN_MISSING": "set MODELYARD_TOKEN to the token `make up` printed",
    "API_TOKEN_INVALID": "check MODELYARD_TOKEN: `make up` prints the token",
    "GATEWAY_UNREACHABLE": "is the stack up (`make up`) and MODELYARD_URL right?",
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


class JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class DownloadFormat(StrEnum):
    original = "original"
    csv = "csv"
    parquet = "parquet"


# File name extensions of an original upload, by its detected format and compression.
ORIGINAL_EXTENSIONS = {"FORMAT_PARQUET": ".parquet", "FORMAT_XLSX": ".xlsx"}
COMPRESSED_EXTENSIONS = {
    "COMPRESSION_GZIP": ".csv.gz",
    "COMPRESSION_ZSTD": ".csv.zst",
    "COMPRESSION_BZIP2": ".csv.bz2",
}


class Settings:
    """Options every command shares, set by the top-level callback."""

    url: str | None = None
    token: str | None = None
    output: Output = Output.table


settings = Settings()
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line

OutputOption = Annotated[
    Output | None,
    typer.Option(
        "--output",
        "-O",
        help="table (for people) or json (for scripts).",
        show_default=False,
        case_sensitive=False,
    ),
]

app = typer.Typer(
    help="The modelyard platform from a terminal, through its REST gateway "
    "(MODELYARD_URL, MODELYARD_TOKEN).",
    epilog="Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 not found, 4 invalid request, "
    "5 authentication, 6 unavailable or timed out, 7 job FAILED, 8 job CANCELLED, "
    "130 interrupted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
datasets_app = typer.Typer(
    help="Upload, inspect, download and delete datasets.", no_args_is_help=True
)
jobs_app = typer.Typer(help="Follow and control training jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models and their versions.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
projects_app = typer.Typer(
    help="Projects (admin of the default project only).", no_args_is_help=True
)
tokens_app = typer.Typer(
    help="API tokens of a project: create (the secret is shown once), list, revoke.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")
app.add_typer(projects_app, name="projects")
app.add_typer(tokens_app, name="tokens")


def print_version(value: bool) -> None:
    if value:
        try:
            print(f"modelyard {metadata.version('modelyard')}")
        except metadata.PackageNotFoundError:
            print("modelyard (not installed)")
        raise typer.Exit()


@app.callback()
def common_options(
    url: Annotated[
        str | None,
        typer.Option(envvar="MODELYARD_URL", help="Gateway URL.", show_default=False),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="MODELYARD_TOKEN", help="Bearer token.", show_default=False),
    ] = None,
    output: OutputOption = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=print_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    settings.url, settings.token = url, token
    settings.output = output or Output.table


def use(output: Output | None) -> Client:
    """A client of the gateway; the command's own `--output` wins over the global one."""
    if output is not None:
        settings.output = output
    try:
        return Client(settings.url, settings.token)
    except ModelyardError as error:
        fail(error)


def as_json() -> bool:
    return settings.output is Output.json


def fail(error: ModelyardError) -> NoReturn:
    """One line on stderr with the status and reason code; the exit code that goes with it."""
    if as_json():
        payload = {"status": error.status, "reason": error.reason, "message": error.message}
        if error.request_id:
            payload["requestId"] = error.request_id
        print(json.dumps({"error": payload}), file=sys.stderr)
    else:
        hint = HINTS.get(error.reason)
        line = f"[bold red]error[/]: {escape(str(error))}"
        stderr.print(line + (f" [dim]({escape(hint)})[/]" if hint else ""), soft_wrap=True)
    raise typer.Exit(EXIT_BY_STATUS.get(error.status, EXIT_ERROR))


R = TypeVar("R")


def call(function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    try:
        return function(*args, **kwargs)
    except ModelyardError as error:
        fail(error)


def take(rows: Iterator[Json], limit: int) -> list[Json]:
    """The first `limit` items of a paginated list (only the pages needed are fetched)."""
    taken: list[Json] = []
    try:
        for row in rows:
            taken.append(row)
            if len(taken) >= limit:
                break
    except ModelyardError as error:
        fail(error)
    return taken


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# -- datasets ------------------------------------------------------------------------


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option(help="Display name (default: file name).")] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="Field delimiter (default: detected from the text).")
    ] = None,
    no_header: Annotated[bool, typer.Option("--no-header", help="First row is data.")] = False,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    new_version_of: Annotated[
        str | None,
        typer.Option(
            "--new-version-of",
            metavar="DATASET",
            help="Upload as the next version of this dataset (id or name), under its name.",
        ),
    ] = None,
    sheet: Annotated[
        str | None, typer.Option(help="XLSX: the sheet to read (default: the first).")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Upload a table (CSV, TSV, gzip/zstd/bzip2 of them, Parquet or XLSX), with a
    progress bar in bytes; prints its format, header repairs and profile."""
    size = file.stat().st_size
    with use(output) as api, transfer_progress() as progress:
        bar = progress.add_task(f"upload {file.name}", total=size)

        def sent(chunk: int) -> None:
            progress.advance(bar, chunk)
            if progress.tasks[0].completed >= size:  # the service now converts and profiles
                progress.update(bar, description=f"upload {file.name}: sent, profiling")

        try:
            dataset = api.upload_dataset(
                file,
                name,
                delimiter=delimiter,
                has_header=False if no_header else None,
                request_id=request_id,
                new_version_of=new_version_of,
                sheet=sheet,
                on_progress=sent,
            )
        except ModelyardError as error:
            discard(progress)
            fail(error)
        progress.update(bar, description=f"upload {file.name}: done")
    show_dataset(dataset)


@datasets_app.command("list")
def datasets_list(
    name_contains: Annotated[str | None, typer.Option(help="Filter by display name.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    output: OutputOption = None,
) -> None:
    """List datasets, newest first."""
    with use(output) as api:
        datasets = take(api.list_datasets(name_contains), limit)
    if as_json():
        return emit_json(datasets)
    if not datasets:
        return stdout.print("no datasets yet: upload one with `modelyard datasets upload FILE`")
    stdout.print(render.datasets_table(datasets))


@datasets_app.command("show")
def datasets_show(
    dataset: Annotated[
        str, typer.Argument(metavar="DATASET", help="A dataset id, a name, or name@version.")
    ],
    output: OutputOption = None,
) -> None:
    """A dataset with its format, header repairs, schema and the profile of every column."""
    with use(output) as api:
        try:
            found = api.get_dataset(dataset)
        except ModelyardError as error:
            if error.http_status != 404:
                fail(error)
            found = call(api.lookup_dataset, dataset)
        show_dataset(found)


@datasets_app.command("versions")
def datasets_versions(
    name: Annotated[str, typer.Argument(help="The display name of the dataset.")],
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    output: OutputOption = None,
) -> None:
    """The versions of a named dataset, newest first."""
    with use(output) as api:
        versions = take(api.list_dataset_versions(name), limit)
    if as_json():
        return emit_json(versions)
    if not versions:
        return stdout.print(f"no READY dataset is named {escape(name)!r}")
    stdout.print(render.dataset_versions_table(versions))


@datasets_app.command("delete")
def datasets_delete(dataset_id: str, output: OutputOption = None) -> None:
    """Delete a dataset and its stored files (models trained on it stay)."""
    with use(output) as api:
        call(api.delete_dataset, dataset_id)
    if as_json():
        return emit_json({"deleted": dataset_id})
    stdout.print(f"deleted dataset {dataset_id}")


@datasets_app.command("download")
def datasets_download(
    dataset_id: str,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to write the file (default: ID and the format's extension)."
        ),
    ] = None,
    file_format: Annotated[
        DownloadFormat,
        typer.Option(
            "--format",
            "-f",
            case_sensitive=False,
            help="original (the file as uploaded), or the rows as csv or parquet.",
        ),
    ] = DownloadFormat.original,
    output: OutputOption = None,
) -> None:
    """Download a dataset as uploaded, or as CSV or Parquet, with a progress bar in bytes."""
    with use(output) as api:
        dataset = call(api.get_dataset, dataset_id)
        destination = out or Path(dataset_id + download_extension(dataset, file_format))
        # Only the original's size is known ahead; a converted file's bar just counts.
        size = int(dataset.get("sizeBytes", 0)) if file_format is DownloadFormat.original else 0
        with transfer_progress() as progress:
            bar = progress.add_task(f"download {destination.name}", total=size or None)
            try:
                written = api.download_dataset(
                    dataset_id,
                    destination,
                    format=file_format.value,
                    on_progress=lambda n: progress.advance(bar, n),
                )
            except ModelyardError as error:
                discard(progress)
                fail(error)
    if as_json():
        return emit_json({"datasetId": dataset_id, "path": str(destination), "bytes": written})
    stdout.print(f"wrote {human_bytes(written)} to {escape(str(destination))}")


def download_extension(dataset: Json, file_format: DownloadFormat) -> str:
    if file_format is not DownloadFormat.original:
        return f".{file_format.value}"
    source = dataset.get("sourceFormat") or {}
    if source.get("format") in ORIGINAL_EXTENSIONS:
        return ORIGINAL_EXTENSIONS[source["format"]]
    return COMPRESSED_EXTENSIONS.get(source.get("compression", ""), ".csv")


def show_dataset(dataset: Json) -> None:
    if as_json():
        return emit_json(dataset)
    stdout.print(render.dataset_card(dataset))
    if dataset.get("headerRepairs"):
        stdout.print()
        stdout.print(render.repairs_table(dataset))
    if dataset.get("columns"):
        stdout.print()
        stdout.print(render.profile_table(dataset))


# -- training --------------------------------------------------------------------------


@app.command("train")
def train(
    dataset_id: Annotated[
        str,
        typer.Argument(
            metavar="DATASET",
            help="The dataset to train on: an id, a name (its latest version) or name@version.",
        ),
    ],
    target: Annotated[str, typer.Option(metavar="COLUMN", help="The column to predict.")],
    task: Annotated[
        Task, typer.Option(case_sensitive=False, help="Kind of model (AUTO decides).")
    ] = Task.AUTO,
    param: Annotated[
        list[str] | None,
        typer.Option(metavar="K=V", help="LightGBM parameter override (repeatable)."),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Registered model name (default: dataset-target)."),
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    max_run_seconds: Annotated[
        float | None, typer.Option(min=1, metavar="SECONDS", help="Longest run time.")
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", help="Search LightGBM configurations for this long (e.g. 60)."
        ),
    ] = None,
    max_trials: Annotated[
        int | None, typer.Option(metavar="N", help="Search at most N configurations.")
    ] = None,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate", help="Only quote the job (time, memory, trials); queue nothing."
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job to its end, with a progress bar.")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Queue a training job; with --wait, follow it live and print its metrics.

    With --budget and/or --max-trials the Trainer searches configurations with
    cross-validation and keeps the best; --estimate only prints the quote."""
    params = dict(parse_param(p) for p in param or [])
    with use(output) as api:
        if estimate:
            quote = call(
                api.estimate_training_job,
                dataset_id,
                target,
                task=task.value,
                params=params,
                search_budget_seconds=budget,
                search_max_trials=max_trials,
            )
            if as_json():
                return emit_json(quote)
            return stdout.print(render.estimate_card(quote))
        job = call(
            api.create_training_job,
            dataset_id,
            target,
            task=task.value,
            params=params,
            registered_model_name=model_name,
            request_id=request_id,
            max_run_duration_seconds=max_run_seconds,
            search_budget_seconds=budget,
            search_max_trials=max_trials,
        )
        if not wait:
            show_job(job)
            if not as_json():
                stdout.print(f"\n[dim]follow it with: modelyard jobs watch {job['jobId']}[/]")
            return
        announce(job)
        job = follow(api, job["jobId"], announced=job)
    finish(job)


@jobs_app.command("list")
def jobs_list(
    state: Annotated[
        JobState | None, typer.Option(case_sensitive=False, help="Only jobs in this state.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Only jobs on this dataset.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    output: OutputOption = None,
) -> None:
    """List training jobs, newest first."""
    with use(output) as api:
        jobs = take(api.list_training_jobs(state.value if state else None, dataset), limit)
    if as_json():
        return emit_json(jobs)
    if not jobs:
        return stdout.print("no training jobs" + (f" {state.value}" if state else "") + " yet")
    stdout.print(render.jobs_table(jobs))


@jobs_app.command("show")
def jobs_show(job_id: str, output: OutputOption = None) -> None:
    """One job: state, metrics, MLflow run and model version."""
    with use(output) as api:
        show_job(call(api.get_training_job, job_id))


@jobs_app.command("watch")
def jobs_watch(job_id: str, output: OutputOption = None) -> None:
    """Follow a job to its end with a progress bar; exits 7 if it FAILED, 8 if CANCELLED."""
    with use(output) as api:
        job = follow(api, job_id)
    finish(job)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it has stopped.")] = False,
    output: OutputOption = None,
) -> None:
    """Cancel a job: at once when queued, at its next boosting iteration when running."""
    with use(output) as api:
        job = call(api.cancel_training_job, job_id)
        if wait and job.get("state") not in FINAL_STATES:
            announce(job)
            job = follow(api, job_id, announced=job)
    show_job(job)


@jobs_app.command("trials")
def jobs_trials(
    job_id: str,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    output: OutputOption = None,
) -> None:
    """The configurations a searching job tried, by trial number (the best marked)."""
    with use(output) as api:
        trials = take(api.list_trials(job_id), limit)
    if as_json():
        return emit_json(trials)
    if not trials:
        return stdout.print(f"job {job_id} has no trials (it did not search, or has not yet)")
    stdout.print(render.trials_table(trials))


@jobs_app.command("report")
def jobs_report(
    job_id: str,
    charts: Annotated[
        Path | None,
        typer.Option(help="Write the report's charts (PNG) into this directory."),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Where a succeeded job's model goes wrong: confusion matrix, per-class precision
    and recall, curve areas (classification), residuals (regression)."""
    with use(output) as api:
        report = api.get_training_job_report(job_id).get("report", {})
    written = write_charts(report, charts) if charts is not None else []
    if as_json():
        return emit_json(report)
    for table in render.report_tables(report):
        stdout.print(table)
    for path in written:
        stdout.print(f"chart written: {path}")


def write_charts(report: Json, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in report.get("charts", []):
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(chart.get("name", "chart")))
        path = directory / f"{name}.png"
        path.write_bytes(base64.b64decode(chart.get("png", "")))
        written.append(path)
    return written


@jobs_app.command("replay")
def jobs_replay(
    job_id: str,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the replay to its end and tell the hash.")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Retrain a job's recorded configuration on its recorded dataset version, as a new
    job; with --wait, say whether the model file's sha256 matched (exit 9 if not)."""
    with use(output) as api:
        job = call(api.replay_training_job, job_id, request_id)
        if not wait:
            show_job(job)
            return
        announce(job)
        job = follow(api, job["jobId"], announced=job)
    replay = job.get("replay") or {}
    if job.get("state") == "SUCCEEDED" and not replay.get("modelSha256Matches"):
        show_job(job)
        if not as_json():
            stderr.print("[bold red]the replayed model's sha256 differs from the original's[/]")
        raise typer.Exit(EXIT_REPLAY_DIFFERS)
    finish(job)


def announce(job: Json) -> None:
    """One line on stderr for each state a followed job goes through."""
    if as_json():
        return
    state = job.get("state", "")
    notes = {
        "QUEUED": "waiting for a free trainer",
        "RUNNING": f"attempt {job.get('attempt', 1)}",
        "CANCELLING": "the trainer stops at its next boosting iteration",
    }
    note = notes.get(state) or render.took(job)
    stderr.print(
        f"job {job['jobId']} {render.state(state)}" + (f" [dim]({note})[/]" if note else "")
    )


def follow(api: Client, job_id: str, announced: Json | None = None) -> Json:
    """Watch a job to its end: a line per state, a live bar of boosting iterations."""
    job: Json = announced or {}
    said_state = job.get("state", "")
    said_task = bool((job.get("taskDetection") or {}).get("task"))  # the caller showed it
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=32),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[metric]}"),
        TimeElapsedColumn(),
        console=stderr,
        disable=as_json(),
    ) as progress:
        bar = progress.add_task("waiting", total=None, count="", metric="", visible=False)
        try:
            with closing(api.watch_training_job(job_id)) as updates:
                for job in updates:
                    show_progress(progress, bar, job)  # first: a line printed redraws the bar
                    if job.get("state") != said_state:
                        said_state = job.get("state", "")
                        announce(job)
                    detection = job.get("taskDetection") or {}
                    if detection.get("task") and not said_task and not as_json():
                        said_task = True
                        stderr.print(f"  task {render.task_detection(detection)}")
        except ModelyardError as error:
            discard(progress)
            fail(error)
        except KeyboardInterrupt:
            progress.stop()  # the bar stays on screen, where it was
            progress.disable = True
            stderr.print(
                f"stopped following; the job goes on: `modelyard jobs watch {job_id}` "
                f"to follow it again, `modelyard jobs cancel {job_id}` to stop it"
            )
            raise
        if not progress.tasks[0].visible:
            discard(progress)
    if job.get("state") not in FINAL_STATES:  # the stream ended early: ask for the truth
        job = call(api.get_training_job, job_id)
    return job


def show_progress(progress: Progress, bar: TaskID, job: Json) -> None:
    """The bar: iterations done of the most, and the latest validation metric."""
    training, state = job.get("progress") or {}, job.get("state", "")
    if not training:
        waiting = {"QUEUED": "waiting for a trainer", "RUNNING": "reading the data"}
        if state in waiting:  # a pulsing bar: something is happening
            progress.update(bar, description=waiting[state], visible=True)
        else:
            progress.update(bar, visible=False)
        return
    done, total = int(training.get("iteration", 0)), int(training.get("totalIterations", 0))
    count = f"{done}/{total} iterations" if total else f"{done} iterations"
    if job.get("search"):  # the trial fields are always in the JSON, 0 outside a search
        count = render.search_progress(training)
    best = int((job.get("summary") or {}).get("bestIteration", 0))
    if state == "SUCCEEDED" and best:
        # Progress comes at most twice a second, so the last one seen may be well
        # before the end: the summary says how many iterations the model kept.
        done = best
        count = f"{best}/{total} iterations" + (" (early stopping)" if best < total else "")
    metric = ""
    if training.get("metricName"):
        value = render.metric(training.get("metricValue"))
        metric = f"validation {escape(training['metricName'])} {value}"
    progress.update(
        bar,
        description=state.lower() if state in FINAL_STATES else "training",
        completed=done,
        total=total or None,
        count=count,
        metric=metric,
        visible=True,
    )


def finish(job: Json) -> None:
    """Print a followed job, and exit 7 if it FAILED, 8 if it was CANCELLED."""
    show_job(job)
    finish_state(job)


def finish_state(job: Json) -> None:
    """Exit 7 if the job FAILED (its error on stderr), 8 if it was CANCELLED."""
    state = job.get("state")
    if state == "FAILED":
        error = job.get("error") or {}
        if as_json():
            payload = {
                "status": status_name(error),
                "reason": reason_of(error),
                "message": error.get("message", ""),
                "jobId": job["jobId"],
            }
            print(json.dumps({"error": payload}), file=sys.stderr)
        else:
            line = f"job {job['jobId']} FAILED: {render.status_text(error)}"
            stderr.print(f"[bold red]error[/]: {escape(line)}", soft_wrap=True)
        raise typer.Exit(EXIT_JOB_FAILED)
    if state == "CANCELLED":
        if not as_json():
            stderr.print(f"job {job['jobId']} was cancelled")
        raise typer.Exit(EXIT_JOB_CANCELLED)


def show_job(job: Json) -> None:
    if as_json():
        return emit_json(job)
    stdout.print(render.job_card(job))
    if job.get("metrics"):
        stdout.print()
        stdout.print(render.metrics_table(job["metrics"], render.task_of(job)))


# -- models ------------------------------------------------------------------------------


@models_app.command("list")
def models_list(
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    output: OutputOption = None,
) -> None:
    """Registered models with their latest and champion versions."""
    with use(output) as api:
        models = take(api.list_models(), limit)
    if as_json():
        return emit_json(models)
    if not models:
        return stdout.print("no models yet: train one with `modelyard train DATASET --target COL`")
    stdout.print(render.models_table(models))


@models_app.command("show")
def models_show(name: str, output: OutputOption = None) -> None:
    """A model's versions with their scores; the champion is marked."""
    with use(output) as api:
        model = call(api.get_model, name)
    if as_json():
        return emit_json(model)
    stdout.print(render.model_card(model))
    stdout.print()
    stdout.print(render.versions_table(model))


# -- projects and API tokens -------------------------------------------------------------


class TokenRole(StrEnum):
    viewer = "viewer"
    trainer = "trainer"
    admin = "admin"


ProjectOption = Annotated[
    str, typer.Option("--project", "-p", help="The project the tokens belong to.")
]


@projects_app.command("create")
def projects_create(
    project_id: Annotated[str, typer.Argument(metavar="PROJECT", help="lower-case, digits, '-'.")],
    display_name: Annotated[str, typer.Option(help="A name for people.")] = "",
    output: OutputOption = None,
) -> None:
    """Create a project."""
    with use(output) as api:
        project = call(api.create_project, project_id, display_name)["project"]
    if as_json():
        return emit_json(project)
    stdout.print(f"created project {escape(project['projectId'])}")


@projects_app.command("list")
def projects_list(
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    output: OutputOption = None,
) -> None:
    """The projects this token may see (all of them for an admin of default)."""
    with use(output) as api:
        projects = take(api.list_projects(), limit)
    if as_json():
        return emit_json(projects)
    stdout.print(render.projects_table(projects))


@tokens_app.command("create")
def tokens_create(
    project: ProjectOption = "default",
    role: Annotated[
        TokenRole,
        typer.Option(help="viewer reads; trainer also trains; admin also manages tokens."),
    ] = TokenRole.viewer,
    display_name: Annotated[str, typer.Option(help="What the token is for.")] = "",
    expires_in: Annotated[
        float | None,
        typer.Option(min=1, help="Seconds it works (the service's default when not given)."),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Create an API token; its secret is printed this once only."""
    with use(output) as api:
        made = call(api.create_api_token, project, role.value, display_name, expires_in)
    if as_json():
        return emit_json(made)
    token = made["apiToken"]
    stdout.print(
        f"token {token['tokenId']} of project {escape(token['projectId'])}, "
        f"{role.value}, expires {token.get('expireTime', '')}"
    )
    stdout.print("secret (shown once; export MODELYARD_TOKEN=…):")
    print(made["secret"])


@tokens_app.command("list")
def tokens_list(
    project: ProjectOption = "default",
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    output: OutputOption = None,
) -> None:
    """A project's tokens, newest first (never their secrets)."""
    with use(output) as api:
        tokens = take(api.list_api_tokens(project), limit)
    if as_json():
        return emit_json(tokens)
    stdout.print(render.tokens_table(tokens))


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID")],
    project: ProjectOption = "default",
    output: OutputOption = None,
) -> None:
    """Revoke a token: it stops working (within the gateway's token cache time)."""
    with use(output) as api:
        token = call(api.revoke_api_token, project, token_id)["apiToken"]
    if as_json():
        return emit_json(token)
    stdout.print(f"revoked token {token['tokenId']} at {token.get('revokeTime', '')}")


@app.command("score")
def score(
    dataset_id: Annotated[
        str,
        typer.Argument(
            metavar="DATASET",
            help="The stored dataset to score: an id, a name (its latest version) or name@version.",
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            metavar="NAME[@ALIAS|/VERSION]",
            help="The registered model; its champion unless an alias or version is given.",
        ),
    ],
    keep: Annotated[
        list[str] | None,
        typer.Option(metavar="COLUMN", help="Copy this column into the output (repeatable)."),
    ] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="One probability column per class.")
    ] = False,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="Each feature's contribution (TreeSHAP), base value."),
    ] = False,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Display name of the output dataset.")
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    max_run_seconds: Annotated[
        float | None, typer.Option(min=1, metavar="SECONDS", help="Longest run time.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job to its end, with a progress bar.")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Queue a scoring job: every row of a stored dataset through a model version, into
    a new dataset (download it with `modelyard datasets download`). With --wait,
    follow it with a bar of rows scored."""
    model_name, version, alias = parse_model_reference(model, param_hint="--model")
    with use(output) as api:
        job = call(
            api.create_scoring_job,
            dataset_id,
            model_name,
            model_version=version,
            model_alias=alias,
            pass_through_columns=keep or [],
            class_probabilities=probabilities,
            explain=explain,
            output_display_name=name,
            request_id=request_id,
            max_run_duration_seconds=max_run_seconds,
        )
        if not wait:
            show_scoring_job(job)
            return
        announce(job)
        job = follow_scoring(api, job["jobId"], job)
    show_scoring_job(job)
    finish_state(job)


def follow_scoring(api: Client, job_id: str, job: Json) -> Json:
    """Watch a scoring job to its end: a line per state, a bar of rows scored."""
    said_state = job.get("state", "")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=32),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        console=stderr,
        disable=as_json(),
    ) as progress:
        bar = progress.add_task("waiting for a trainer", total=None, count="")
        try:
            with closing(api.watch_scoring_job(job_id)) as updates:
                for job in updates:
                    rows = job.get("progress") or {}
                    total = int(rows.get("rowsTotal", 0)) or None
                    progress.update(
                        bar,
                        description="scoring" if job.get("state") == "RUNNING" else "waiting",
                        completed=int(rows.get("rowsDone", 0)),
                        total=total,
                        count=render.rows_done(rows) if rows else "",
                    )
                    if job.get("state") != said_state:
                        said_state = job.get("state", "")
                        announce(job)
        except ModelyardError as error:
            discard(progress)
            fail(error)
        except KeyboardInterrupt:
            progress.stop()
            progress.disable = True
            stderr.print(f"stopped following; the job goes on: `modelyard jobs cancel {job_id}`")
            raise
    if job.get("state") not in FINAL_STATES:  # the stream ended early: ask for the truth
        job = call(api.get_scoring_job, job_id)
    return job


def show_scoring_job(job: Json) -> None:
    if as_json():
        return emit_json(job)
    stdout.print(render.scoring_card(job))


@app.command("predict")
def predict(
    model: Annotated[str, typer.Argument(help="NAME (its champion), NAME@ALIAS or NAME:VERSION.")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the scored CSV here (default: stdout)."),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Score the rows of a CSV file: each row comes back with a `prediction` column and,
    for classification, a `probability_<class>` column per class."""
    name, version, alias = parse_model_reference(model)
    with use(output) as api, file.open(newline="") as source:
        scored = Scored(api, name, version, alias, csv.DictReader(source))
        if out is None and as_json():
            return emit_json(list(scored))
        if out is None:
            write_csv(sys.stdout, scored)
            return
        with out.open("w", newline="") as handle:
            count = write_csv(handle, scored)
    if as_json():
        return emit_json(
            {"model": name, "modelVersion": scored.model_version, "rows": count, "path": str(out)}
        )
    stderr.print(
        f"scored {count:,} rows with {escape(name)} version {scored.model_version} "
        f"→ {escape(str(out))}"
    )


class Scored:
    """The rows of a CSV with their predictions, scored a batch per request."""

    def __init__(
        self,
        api: Client,
        name: str,
        version: int | None,
        alias: str | None,
        rows: Iterator[dict[str, str]],
    ) -> None:
        self.api, self.name, self.version, self.alias = api, name, version, alias
        self.rows = rows
        self.model_version = ""  # the version that answered, once known

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in batches(self.rows, PREDICT_BATCH_ROWS):
            answer = call(
                self.api.predict_columns,
                self.name,
                row_columns([typed_row(row) for row in batch]),
                version=self.version,
                alias=self.alias,
            )
            self.model_version = str(answer.get("modelVersion", ""))
            classes = answer.get("classNames", [])
            for row, prediction in zip(batch, answer.get("predictions", []), strict=True):
                scored: dict[str, Any] = {**row, "prediction": prediction.get("value")}
                for label, p in zip(classes, prediction.get("probabilities", []), strict=False):
                    scored[f"probability_{label}"] = p
                yield scored


def row_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as Predict's `columns` (no key per value): each column's values, null where
    a row lacks it."""
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: [row.get(name) for row in rows] for name in names}


# -- helpers -----------------------------------------------------------------------------


def transfer_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=32),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=stderr,
        disable=as_json(),
    )


def discard(progress: Progress) -> None:
    """Stop a progress display and leave nothing of it: an error is then the only
    line on stderr (Progress would print its last frame and a blank line)."""
    progress.live.transient = True
    progress.live.stop()
    progress.disable = True  # so that leaving its `with` block prints nothing either


def parse_param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"expected k=v, got {text!r}", param_hint="--param")
    return key.strip(), value.strip()


def parse_model_reference(
    text: str, param_hint: str = "MODEL"
) -> tuple[str, int | None, str | None]:
    """NAME, NAME@ALIAS, NAME:VERSION or NAME/VERSION → (name, version, alias)."""
    if "@" in text:
        name, alias = text.rsplit("@", 1)
        if not name or not alias:
            raise typer.BadParameter(f"expected NAME@ALIAS, got {text!r}", param_hint=param_hint)
        return name, None, alias
    for separator in (":", "/"):
        if separator in text:
            name, version = text.rsplit(separator, 1)
            if not name or not version.isdigit():
                raise typer.BadParameter(
                    f"expected NAME{separator}VERSION with a version number, got {text!r}",
                    param_hint=param_hint,
                )
            return name, int(version), None
    return text, None, None


# What the Dataset service reads as a missing value in a CSV (its upload rules).
CSV_MISSING_MARKERS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
     "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip


def typed_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    """CSV text to JSON values: missing markers → null, numbers → numbers, the rest as text."""
    typed: dict[str, Any] = {}
    for key, value in row.items():
        if key is None:  # more fields than the header has
            continue
        if value is None or value in CSV_MISSING_MARKERS:
            typed[key] = None  # as the file would have been read at upload
            continue
        try:
            number = float(value)
        except ValueError:
            typed[key] = value
            continue
        if number != number or abs(number) == float("inf"):
            # JSON has no NaN or infinity: the text goes as it is (Predict refuses it)
            typed[key] = value
        elif value.strip().lstrip("+-").isdigit():
            typed[key] = int(value)
        else:
            typed[key] = number
    return typed


def batches(rows: Iterator[dict[str, str]], size: int) -> Iterator[list[dict[str, str]]]:
    batch: list[dict[str, str]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_csv(handle: IO[str], rows: Iterable[dict[str, Any]]) -> int:
    """Stream rows as CSV, the header from the first row; returns how many were written."""
    writer: csv.DictWriter[str] | None = None
    count = 0
    for row in rows:
        if writer is None:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
        writer.writerow(row)
        count += 1
    return count


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
