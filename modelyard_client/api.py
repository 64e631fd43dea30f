"""A small Python client of the modelyard REST gateway, for scripts and the CLI.

    from modelyard_client import Client

    with Client() as client:  # MODELYARD_URL and MODELYARD_TOKEN from the environment
        dataset = client.upload_dataset("iris.csv")
        job = client.create_training_job(dataset["datasetId"], "species")
        job = client.wait_for_training_job(job["jobId"])
        print(job["state"], job["metrics"])

Resources are returned as the gateway sends them: proto3 JSON dictionaries with
lowerCamelCase keys, enums as names (`"state": "READY"`) and 64-bit integers as
strings (`"rowCount": "150"`). Lists are iterators that fetch the next page when
needed. Every failure raises `ModelyardError`, which carries the gRPC status name
and the stable reason code of the platform (`NOT_FOUND DATASET_NOT_FOUND`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
UPLOAD_CHUNK_BYTES = 1024 * 1024
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
# A watch cut mid-stream (a proxy, a gateway restart) is resumed this many times in a row.
WATCH_RECONNECTS = 5
# google/rpc/code.proto: a job's `error` carries the number, not the name.
STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)

Json = dict[str, Any]


class ModelyardError(Exception):
    """An error answer of the gateway, or no answer at all.

    `status` is the canonical gRPC code name (`NOT_FOUND`), `reason` the stable
    reason code (`DATASET_NOT_FOUND`); `http_status` is 0 when the gateway could
    not be reached.
    """

    def __init__(
        self,
        http_status: int,
        status: str,
        reason: str,
        message: str,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status
        self.reason = reason
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    @classmethod
    def from_status(
        cls, status: Mapping[str, Any], http_status: int = 0, request_id: str | None = None
    ) -> ModelyardError:
        """From a `google.rpc.Status` in proto3 JSON (or the gateway's error document)."""
        return cls(
            http_status,
            status_name(status),
            reason_of(status),
            str(status.get("message", "")),
            request_id,
        )

    @classmethod
    def from_response(cls, response: httpx.Response) -> ModelyardError:
        request_id = response.headers.get("x-request-id")
        try:
            error = response.json()["error"]
            if not isinstance(error, dict):
                raise TypeError("error is not an object")
        except (ValueError, KeyError, TypeError):
            text = " ".join(response.text.split())[:200] or response.reason_phrase
            status = _status_of_http(response.status_code)
            return cls(response.status_code, status, "UNEXPECTED_RESPONSE", text, request_id)
        return cls.from_status(error, response.status_code, request_id)


def status_name(status: Mapping[str, Any]) -> str:
    """The gRPC code name of a status: its `status` field, else the name of its `code`."""
    if status.get("status"):
        return str(status["status"])
    code = status.get("code", 2)
    if isinstance(code, int) and 0 <= code < len(STATUS_NAMES):
        return STATUS_NAMES[code]
    return "UNKNOWN"


def reason_of(status: Mapping[str, Any]) -> str:
    """The reason of the first `google.rpc.ErrorInfo` detail, or UNKNOWN."""
    for detail in status.get("details") or []:
        if isinstance(detail, dict) and detail.get("reason"):
            return str(detail["reason"])
    return "UNKNOWN"


def _status_of_http(http_status: int) -> str:
    """For answers that are not the gateway's (a proxy's HTML page, say)."""
    known = {
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
    }
    if http_status in known:
        return known[http_status]
    if http_status in (502, 503, 504):
        return "UNAVAILABLE"
    return "INVALID_ARGUMENT" if http_status < 500 else "UNKNOWN"


def _user_agent() -> str:
    try:
        version = metadata.version("modelyard")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"modelyard-client/{version}"


class Client:
    """The gateway's REST API as Python calls; use it as a context manager."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 60.0
    ) -> None:
        self.url = (url or os.environ.get("MODELYARD_URL") or DEFAULT_URL).rstrip("/")
        if urlsplit(self.url).scheme not in ("http", "https") or not urlsplit(self.url).netloc:
            raise ModelyardError(
                0,
                "INVALID_ARGUMENT",
                "GATEWAY_URL_INVALID",
                f"the gateway URL must look like http://host:port, got {self.url!r}",
            )
        token = token if token is not None else os.environ.get("MODELYARD_TOKEN", "")
        headers = {"User-Agent": _user_agent()}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------

    def _transport_error(self, error: httpx.TransportError) -> ModelyardError:
        detail = str(error) or type(error).__name__
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            message = f"cannot reach the gateway at {self.url} ({detail})"
        elif isinstance(error, httpx.TimeoutException):
            return ModelyardError(
                0,
                "DEADLINE_EXCEEDED",
                "GATEWAY_TIMEOUT",
                f"the gateway at {self.url} did not answer in time ({detail})",
            )
        else:
            message = f"lost the connection to the gateway at {self.url} ({detail})"
        return ModelyardError(0, "UNAVAILABLE", "GATEWAY_UNREACHABLE", message)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise self._transport_error(error) from error
        if response.status_code >= 400:
            raise ModelyardError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Json:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError as error:
            raise ModelyardError.from_response(response) from error
        if not isinstance(body, dict):
            raise ModelyardError(
                response.status_code, "UNKNOWN", "UNEXPECTED_RESPONSE", "not a JSON object"
            )
        return body

    def _pages(self, path: str, key: str, params: Mapping[str, Any]) -> Iterator[Json]:
        """Every item of a paginated list, fetching the next page only when needed."""
        query = {k: v for k, v in params.items() if v not in (None, "")}
        while True:
            page = self._json("GET", path, params=query)
            yield from page.get(key, [])
            token = page.get("nextPageToken")
            if not token:
                return
            query["pageToken"] = token

    # -- datasets ----------------------------------------------------------------

    def upload_dataset(
        self,
        path: str | Path,
        display_name: str | None = None,
        *,
        delimiter: str | None = None,
        has_header: bool | None = None,
        request_id: str | None = None,
        new_version_of: str | None = None,
        sheet: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Json:
        """Stream a table to the platform; returns the dataset, profiled and READY.

        The file may be CSV or TSV (plain, gzip, zstd or bzip2; UTF-8, UTF-16 or
        windows-1252), Parquet or XLSX: the service tells them apart by their bytes.
        `new_version_of` (a dataset id or display name) makes the upload that
        dataset's next version, under its name. `on_progress(n)` is called with the
        size of each chunk once it is sent.
        """
        path = Path(path)
        params = {
            "displayName": None
            if new_version_of and not display_name
            else (display_name or path.stem),
            "delimiter": delimiter,
            "hasHeader": None if has_header is None else str(has_header).lower(),
            "requestId": request_id,
            "newVersionOf": new_version_of,
            "sheet": sheet,
        }
        with path.open("rb") as handle:
            return self._json(
                "POST",
                "/v1/datasets",
                params={k: v for k, v in params.items() if v is not None},
                content=_chunks(handle, on_progress),
                headers={"Content-Type": "application/octet-stream"},
                timeout=httpx.Timeout(60.0, read=3600.0, write=3600.0),
            )

    def get_dataset(self, dataset_id: str) -> Json:
        return self._json("GET", f"/v1/datasets/{_segment(dataset_id)}")

    def lookup_dataset(self, reference: str) -> Json:
        """A READY dataset by id, by display name (its latest version) or by `name@version`."""
        found: Json = self._json("GET", "/v1/datasets:lookup", params={"reference": reference})
        return dict(found.get("dataset") or {})

    def list_dataset_versions(self, display_name: str, page_size: int = 100) -> Iterator[Json]:
        """The READY versions of a named dataset, newest version first."""
        params = {"displayName": display_name, "pageSize": page_size}
        return self._pages("/v1/datasets:versions", "datasets", params)

    def list_datasets(
        self,
        name_contains: str | None = None,
        *,
        state: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Json]:
        """Datasets, newest first."""
        params = {"displayNameContains": name_contains, "state": state, "pageSize": page_size}
        return self._pages("/v1/datasets", "datasets", params)

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{_segment(dataset_id)}")

    def download_dataset(
        self,
        dataset_id: str,
        destination: str | Path,
        *,
        format: str = "ORIGINAL",
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream the dataset into `destination`; returns the number of bytes.

        `format`: ORIGINAL (the file as uploaded), CSV or PARQUET (the rows,
        whatever the upload's format). Nothing is left at `destination` when
        the download fails.
        """
        url = f"/v1/datasets/{_segment(dataset_id)}:download"
        written = 0
        try:
            with self._http.stream(
                "GET",
                url,
                params={"format": format.upper()},
                timeout=httpx.Timeout(60.0, read=3600.0),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ModelyardError.from_response(response)
                try:
                    with Path(destination).open("wb") as out:
                        for chunk in response.iter_bytes():
                            written += out.write(chunk)
                            if on_progress:
                                on_progress(len(chunk))
                except BaseException:
                    Path(destination).unlink(missing_ok=True)  # no truncated file left behind
                    raise
        except httpx.TransportError as error:
            raise self._transport_error(error) from error
        return written

    # -- training jobs -------------------------------------------------------------

    def create_training_job(
        self,
        dataset_id: str,
        target_column: str,
        *,
        task: str = "AUTO",
        params: Mapping[str, str | int | float] | None = None,
        registered_model_name: str | None = None,
        request_id: str | None = None,
        max_run_duration_seconds: float | None = None,
        search_budget_seconds: float | None = None,
        search_max_trials: int | None = None,
    ) -> Json:
        """Queue a training job; returns it, QUEUED. With a search budget and/or
        max trials the Trainer searches LightGBM configurations."""
        body = _job_body(
            dataset_id,
            target_column,
            task=task,
            params=params,
            registered_model_name=registered_model_name,
            request_id=request_id,
            max_run_duration_seconds=max_run_duration_seconds,
            search_budget_seconds=search_budget_seconds,
            search_max_trials=search_max_trials,
        )
        return self._json("POST", "/v1/trainingJobs", json=body)

    def estimate_training_job(
        self,
        dataset_id: str,
        target_column: str,
        *,
        task: str = "AUTO",
        params: Mapping[str, str | int | float] | None = None,
        search_budget_seconds: float | None = None,
        search_max_trials: int | None = None,
    ) -> Json:
        """A quote for a job (wall time, peak memory, trials); nothing is queued."""
        body = _job_body(
            dataset_id,
            target_column,
            task=task,
            params=params,
            search_budget_seconds=search_budget_seconds,
            search_max_trials=search_max_trials,
        )
        return self._json("POST", "/v1/trainingJobs:estimate", json=body)

    def list_trials(self, job_id: str, page_size: int = 100) -> Iterator[Json]:
        """The configurations a searching job tried, by trial number."""
        path = f"/v1/trainingJobs/{_segment(job_id)}/trials"
        return self._pages(path, "trials", {"pageSize": page_size})

    def get_training_job_report(self, job_id: str) -> Json:
        """A succeeded job's evaluation report (charts as base64 PNG in `charts[].png`)."""
        report: Json = self._json("GET", f"/v1/trainingJobs/{_segment(job_id)}/report")
        return report

    def replay_training_job(self, job_id: str, request_id: str | None = None) -> Json:
        """Retrain a job's recorded configuration as a new job; returns it, QUEUED."""
        body: Json = {"requestId": request_id} if request_id else {}
        response = self._json("POST", f"/v1/trainingJobs/{_segment(job_id)}:replay", json=body)
        job: Json = response["trainingJob"]
        return job

    def get_training_job(self, job_id: str) -> Json:
        return self._json("GET", f"/v1/trainingJobs/{_segment(job_id)}")

    def list_training_jobs(
        self, state: str | None = None, dataset_id: str | None = None, page_size: int = 100
    ) -> Iterator[Json]:
        """Training jobs, newest first, optionally only in one state or on one dataset."""
        params = {"state": state, "datasetId": dataset_id, "pageSize": page_size}
        return self._pages("/v1/trainingJobs", "trainingJobs", params)

    def cancel_training_job(self, job_id: str) -> Json:
        """Cancel a job: CANCELLED at once when queued, CANCELLING while it runs."""
        return self._json("POST", f"/v1/trainingJobs/{_segment(job_id)}:cancel", json={})

    def watch_training_job(
        self, job_id: str, timeout: float = 24 * 3600
    ) -> Generator[Json, None, None]:
        """Yield the job at once, then at every state change and progress, until final.

        A stream cut midway is resumed (the gateway sends the job as it is now
        first), so a caller sees every state, though perhaps not every progress.
        """
        yield from self._watch(job_id, timeout, TRAINING_JOBS)

    def watch_scoring_job(
        self, job_id: str, timeout: float = 24 * 3600
    ) -> Generator[Json, None, None]:
        """As watch_training_job, for a scoring job (progress: rows done of rows total)."""
        yield from self._watch(job_id, timeout, SCORING_JOBS)

    def _watch(
        self, job_id: str, timeout: float, kind: tuple[str, str]
    ) -> Generator[Json, None, None]:
        job: Json = {}
        reconnects = 0
        while True:
            try:
                for job in self._watch_once(job_id, timeout, kind):
                    reconnects = 0
                    yield job
            except ModelyardError as error:
                # Resume only a stream that worked (a wrong id or token fails at once),
                # cut by the network, a restart or the gateway's stream deadline.
                transient = error.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
                if not (transient and job) or reconnects >= WATCH_RECONNECTS:
                    raise
            else:
                if job.get("state") in FINAL_STATES:
                    return
                if reconnects >= WATCH_RECONNECTS:
                    raise ModelyardError(
                        0,
                        "UNAVAILABLE",
                        "WATCH_INTERRUPTED",
                        f"the watch of job {job_id} kept ending",
                    )
            reconnects += 1
            time.sleep(min(0.25 * 2**reconnects, 5.0))

    def _watch_once(self, job_id: str, timeout: float, kind: tuple[str, str]) -> Iterator[Json]:
        collection, key = kind
        url = f"/v1/{collection}/{_segment(job_id)}:watch"
        try:
            with self._http.stream(
                "GET",
                url,
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(60.0, read=timeout),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ModelyardError.from_response(response)
                for event, data in server_sent_events(response.iter_lines()):
                    try:
                        payload = json.loads(data)
                    except ValueError as error:
                        raise ModelyardError(
                            response.status_code, "UNKNOWN", "UNEXPECTED_RESPONSE", data[:200]
                        ) from error
                    if event == "error":
                        status = payload.get("error", payload)
                        raise ModelyardError.from_status(status, int(status.get("code", 500)))
                    if event == "job":
                        yield payload[key]
        except httpx.TransportError as error:
            raise self._transport_error(error) from error

    def wait_for_training_job(
        self, job_id: str, timeout: float = 24 * 3600, poll_seconds: float = 0.5
    ) -> Json:
        """The job once final, by polling (works through proxies that cut streams)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_training_job(job_id)
            if job.get("state") in FINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise ModelyardError(
                    0, "DEADLINE_EXCEEDED", "WAIT_TIMEOUT", f"job {job_id} is still {job['state']}"
                )
            time.sleep(poll_seconds)

    # -- models ----------------------------------------------------------------------

    def create_scoring_job(
        self,
        dataset_id: str,
        model_name: str,
        *,
        model_version: int | None = None,
        model_alias: str | None = None,
        pass_through_columns: Iterable[str] = (),
        class_probabilities: bool = False,
        explain: bool = False,
        output_display_name: str | None = None,
        request_id: str | None = None,
        max_run_duration_seconds: float | None = None,
    ) -> Json:
        """Queue a scoring job: every row of a stored dataset through a model version,
        into a new dataset. Returns it, QUEUED, with the version the alias named."""
        body: dict[str, Any] = {"datasetId": dataset_id, "modelName": model_name}
        if model_version is not None:
            body["modelVersion"] = str(model_version)
        if model_alias:
            body["modelAlias"] = model_alias
        if pass_through_columns:
            body["passThroughColumns"] = list(pass_through_columns)
        if class_probabilities:
            body["classProbabilities"] = True
        if explain:
            body["explain"] = True
        if output_display_name:
            body["outputDisplayName"] = output_display_name
        if request_id:
            body["requestId"] = request_id
        if max_run_duration_seconds is not None:
            body["maxRunDuration"] = _duration(max_run_duration_seconds)
        return self._json("POST", "/v1/scoringJobs", json=body)

    def get_scoring_job(self, job_id: str) -> Json:
        return self._json("GET", f"/v1/scoringJobs/{_segment(job_id)}")

    def list_scoring_jobs(
        self, state: str | None = None, dataset_id: str | None = None, page_size: int = 100
    ) -> Iterator[Json]:
        params = {"state": state, "datasetId": dataset_id, "pageSize": page_size}
        return self._pages("/v1/scoringJobs", "scoringJobs", params)

    def cancel_scoring_job(self, job_id: str) -> Json:
        return self._json("POST", f"/v1/scoringJobs/{_segment(job_id)}:cancel", json={})

    def list_models(self, page_size: int = 100) -> Iterator[Json]:
        """Registered models with their latest and champion versions, by name."""
        return self._pages("/v1/models", "models", {"pageSize": page_size})

    def get_model(self, model_name: str) -> Json:
        """A registered model with all its versions and their metrics."""
        return self._json("GET", f"/v1/models/{_segment(model_name)}")

    # -- projects and API tokens (admin) -----------------------------------------

    def create_project(self, project_id: str, display_name: str = "") -> Json:
        body = {"projectId": project_id, "displayName": display_name}
        return self._json("POST", "/v1/projects", json=body)

    def list_projects(self, page_size: int = 100) -> Iterator[Json]:
        return self._pages("/v1/projects", "projects", {"pageSize": page_size})

    def create_api_token(
        self,
        project_id: str,
        role: str,
        display_name: str = "",
        expires_in_seconds: float | None = None,
    ) -> Json:
        """A new token of the project; its `secret` is in this answer only."""
        body: dict[str, Any] = {"role": f"ROLE_{role.upper()}", "displayName": display_name}
        if expires_in_seconds is not None:
            body["expiresIn"] = _duration(expires_in_seconds)
        return self._json("POST", f"/v1/projects/{_segment(project_id)}/apiTokens", json=body)

    def list_api_tokens(self, project_id: str, page_size: int = 100) -> Iterator[Json]:
        path = f"/v1/projects/{_segment(project_id)}/apiTokens"
        return self._pages(path, "apiTokens", {"pageSize": page_size})

    def revoke_api_token(self, project_id: str, token_id: str) -> Json:
        path = f"/v1/projects/{_segment(project_id)}/apiTokens/{_segment(token_id)}"
        return self._json("DELETE", path)

    def predict(
        self,
        model_name: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        version: int | None = None,
        alias: str | None = None,
    ) -> Json:
        """Score rows (column → value) with a version, an alias, else the champion."""
        return self._predict(model_name, {"rows": [dict(row) for row in rows]}, version, alias)

    def predict_columns(
        self,
        model_name: str,
        columns: Mapping[str, Sequence[Any]],
        *,
        version: int | None = None,
        alias: str | None = None,
    ) -> Json:
        """As `predict`, the rows given column by column (column → one value per row):
        the cheaper form for many rows."""
        body: Json = {"columns": {name: list(values) for name, values in columns.items()}}
        return self._predict(model_name, body, version, alias)

    def _predict(self, model_name: str, body: Json, version: int | None, alias: str | None) -> Json:
        if version is not None:
            body["version"] = str(version)
        if alias:
            body["alias"] = alias
        return self._json("POST", f"/v1/models/{_segment(model_name)}:predict", json=body)


TRAINING_JOBS = ("trainingJobs", "trainingJob")  # the route's collection, the watch's key
SCORING_JOBS = ("scoringJobs", "scoringJob")


def _job_body(
    dataset_id: str,
    target_column: str,
    *,
    task: str,
    params: Mapping[str, str | int | float] | None,
    registered_model_name: str | None = None,
    request_id: str | None = None,
    max_run_duration_seconds: float | None = None,
    search_budget_seconds: float | None = None,
    search_max_trials: int | None = None,
) -> Json:
    """The body of a create (and of an estimate, which takes the same)."""
    body: Json = {"datasetId": dataset_id, "targetColumn": target_column, "task": task}
    if params:
        body["params"] = {str(k): str(v) for k, v in params.items()}
    if registered_model_name:
        body["registeredModelName"] = registered_model_name
    if request_id:
        body["requestId"] = request_id
    if max_run_duration_seconds is not None:
        body["maxRunDuration"] = _duration(max_run_duration_seconds)
    if search_budget_seconds is not None or search_max_trials is not None:
        search: Json = {}
        if search_budget_seconds is not None:
            search["budget"] = _duration(search_budget_seconds)
        if search_max_trials is not None:
            search["maxTrials"] = search_max_trials
        body["search"] = search
    return body


def _segment(value: str) -> str:
    """One path segment, escaped: no id or name can reach another route."""
    return quote(value, safe="")


def _duration(seconds: float) -> str:
    """A google.protobuf.Duration in its JSON form: "90s", "1.5s"."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _chunks(handle: BinaryIO, on_progress: Callable[[int], None] | None) -> Iterator[bytes]:
    while chunk := handle.read(UPLOAD_CHUNK_BYTES):
        yield chunk
        if on_progress:
            on_progress(len(chunk))


def server_sent_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event type, data) of each event of a `text/event-stream`, as the HTML spec
    parses it: `:` comments skipped, `data:` lines joined, a blank line dispatches."""
    event = ""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
