"""A small Python client of the modelyard REST gateway, for scripts and the CLI.

    from modelyard_client import Client

    client = Client()  # MODELYARD_URL and MODELYARD_TOKEN from the environment
    dataset = client.upload_dataset("iris.csv")
    job = client.create_training_job(dataset["datasetId"], "species")
    job = client.wait_for_training_job(job["jobId"])
    print(job["state"], job["metrics"])

Resources are returned as the gateway sends them: proto3 JSON dictionaries
with lowerCamelCase keys. Every failure raises `ModelyardError`, which carries
the gateway's status and the stable reason code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
UPLOAD_CHUNK_BYTES = 1024 * 1024
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

Json = dict[str, Any]


class ModelyardError(Exception):
    """An error answer of the gateway, or no answer at all."""

    def __init__(self, http_status: int, status: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status  # 0 when the gateway could not be reached
        self.status = status  # canonical gRPC code name, such as NOT_FOUND
        self.reason = reason  # stable reason code, such as DATASET_NOT_FOUND
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ModelyardError:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            text = response.text.strip()[:200] or response.reason_phrase
            return cls(response.status_code, "UNKNOWN", "UNEXPECTED_RESPONSE", text)
        reasons = [d.get("reason") for d in error.get("details", []) if d.get("reason")]
        return cls(
            response.status_code,
            str(error.get("status", "UNKNOWN")),
            str(reasons[0]) if reasons else "UNKNOWN",
            str(error.get("message", "")),
        )


class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 60.0
    ) -> None:
        self.url = (url or os.environ.get("MODELYARD_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("MODELYARD_TOKEN", "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ModelyardError(0, "UNAVAILABLE", "GATEWAY_UNREACHABLE", str(error)) from error
        if response.status_code >= 400:
            raise ModelyardError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Json:
        body: Json = self._request(method, path, **kwargs).json()
        return body

    def _pages(self, path: str, key: str, params: Mapping[str, Any]) -> Iterator[Json]:
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
        on_progress: Callable[[int], None] | None = None,
    ) -> Json:
        """Stream a CSV file to the platform; returns the dataset once READY.

        `on_progress(n)` is called with the number of bytes each time a chunk is sent.
        """
        path = Path(path)
        params = {
            "displayName": display_name or path.stem,
            "delimiter": delimiter,
            "hasHeader": None if has_header is None else str(has_header).lower(),
            "requestId": request_id,
        }
        with path.open("rb") as handle:
            return self._json(
                "POST",
                "/v1/datasets",
                params={k: v for k, v in params.items() if v is not None},
                content=_chunks(handle, on_progress),
                headers={"Content-Type": "text/csv"},
                timeout=httpx.Timeout(60.0, read=3600.0, write=3600.0),
            )

    def get_dataset(self, dataset_id: str) -> Json:
        return self._json("GET", f"/v1/datasets/{_segment(dataset_id)}")

    def list_datasets(
        self, name_contains: str | None = None, page_size: int = 100
    ) -> Iterator[Json]:
        params = {"displayNameContains": name_contains, "pageSize": page_size}
        return self._pages("/v1/datasets", "datasets", params)

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{_segment(dataset_id)}")

    def download_dataset(self, dataset_id: str, destination: str | Path) -> int:
        """Stream the original CSV into `destination`; returns the number of bytes."""
        url = f"/v1/datasets/{_segment(dataset_id)}:download"
        written = 0
        try:
            with self._http.stream(
                "GET", url, timeout=httpx.Timeout(60.0, read=3600.0)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ModelyardError.from_response(response)
                with Path(destination).open("wb") as out:
                    for chunk in response.iter_bytes():
                        written += out.write(chunk)
        except httpx.TransportError as error:
            raise ModelyardError(0, "UNAVAILABLE", "GATEWAY_UNREACHABLE", str(error)) from error
        return written

    # -- training jobs -------------------------------------------------------------

    def create_training_job(
        self,
        dataset_id: str,
        target_column: str,
        *,
        task: str = "AUTO",
        params: Mapping[str, str] | None = None,
        registered_model_name: str | None = None,
        request_id: str | None = None,
        max_run_duration_seconds: float | None = None,
    ) -> Json:
        body: Json = {"datasetId": dataset_id, "targetColumn": target_column, "task": task}
        if params:
            body["params"] = dict(params)
        if registered_model_name:
            body["registeredModelName"] = registered_model_name
        if request_id:
            body["requestId"] = request_id
        if max_run_duration_seconds:
            body["maxRunDuration"] = f"{max_run_duration_seconds:g}s"
        return self._json("POST", "/v1/trainingJobs", json=body)

    def get_training_job(self, job_id: str) -> Json:
        return self._json("GET", f"/v1/trainingJobs/{_segment(job_id)}")

    def list_training_jobs(
        self, state: str | None = None, dataset_id: str | None = None, page_size: int = 100
    ) -> Iterator[Json]:
        params = {"state": state, "datasetId": dataset_id, "pageSize": page_size}
        return self._pages("/v1/trainingJobs", "trainingJobs", params)

    def cancel_training_job(self, job_id: str) -> Json:
        return self._json("POST", f"/v1/trainingJobs/{_segment(job_id)}:cancel", json={})

    def watch_training_job(self, job_id: str, timeout: float = 24 * 3600) -> Iterator[Json]:
        """Yield the job at once, then at every state change and progress, until final."""
        url = f"/v1/trainingJobs/{_segment(job_id)}:watch"
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
                yield from _server_sent_jobs(response.iter_lines())
        except httpx.TransportError as error:
            raise ModelyardError(0, "UNAVAILABLE", "GATEWAY_UNREACHABLE", str(error)) from error

    def wait_for_training_job(self, job_id: str, timeout: float = 24 * 3600) -> Json:
        """The job once final, by polling (robust across proxies that cut streams)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_training_job(job_id)
            if job.get("state") in FINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise ModelyardError(
                    0, "DEADLINE_EXCEEDED", "WAIT_TIMEOUT", f"job {job_id} not final"
                )
            time.sleep(0.5)

    # -- models ----------------------------------------------------------------------

    def list_models(self, page_size: int = 100) -> Iterator[Json]:
        return self._pages("/v1/models", "models", {"pageSize": page_size})

    def get_model(self, model_name: str) -> Json:
        return self._json("GET", f"/v1/models/{_segment(model_name)}")

    def predict(
        self,
        model_name: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        version: int | None = None,
        alias: str | None = None,
    ) -> Json:
        body: Json = {"rows": [dict(row) for row in rows]}
        if version is not None:
            body["version"] = str(version)
        if alias:
            body["alias"] = alias
        return self._json("POST", f"/v1/models/{_segment(model_name)}:predict", json=body)


def _segment(value: str) -> str:
    """One path segment, escaped: no id or name can reach another route."""
    return quote(value, safe="")


def _chunks(handle: BinaryIO, on_progress: Callable[[int], None] | None) -> Iterator[bytes]:
    while chunk := handle.read(UPLOAD_CHUNK_BYTES):
        yield chunk
        if on_progress:
            on_progress(len(chunk))


def _server_sent_jobs(lines: Iterator[str]) -> Iterator[Json]:
    """Parse `text/event-stream`: yield each `job` event's JSON; raise on `error`."""
    event, data = "message", []
    for line in lines:
        if line.startswith(":"):
            continue  # keep-alive comment
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            payload = json.loads("\n".join(data))
            if event == "error":
                error = payload.get("error", payload)
                reasons = [d.get("reason") for d in error.get("details", []) if d.get("reason")]
                raise ModelyardError(
                    int(error.get("code", 500)),
                    str(error.get("status", "UNKNOWN")),
                    str(reasons[0]) if reasons else "UNKNOWN",
                    str(error.get("message", "")),
                )
            yield payload.get("trainingJob", payload)
            event, data = "message", []
