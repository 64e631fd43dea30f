"""Helpers shared by the whole suite, importable by test modules.

tests/conftest.py holds the fixtures; test modules import names from here,
never from conftest.py (pytest may import a conftest twice under different
names, and a test importing it couples itself to fixture loading order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import httpx

DatabaseFactory = Callable[[str], str]
"""`factory(prefix)` returns the URL of a new, empty database."""


FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}

# What MLflow's client reads from the environment, and what its own setters write
# there (set_tracking_uri, set_registry_uri and set_experiment export their value
# for subprocesses): a test that leaves one behind points the next test's client,
# on the same pytest worker, at another stack's MLflow.
MLFLOW_CLIENT_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
)


@contextmanager
def mlflow_client_of(url: str, username: str, password: str) -> Iterator[Any]:
    """MLflow as a data scientist reads it: the fluent API and the yielded client
    both pointed at `url` with these credentials, and every global and variable
    MLflow keeps put back as it was on the way out."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    saved_variables = {name: os.environ.get(name) for name in MLFLOW_CLIENT_VARIABLES}
    saved_registry = registry_utils._registry_uri
    saved_experiment = fluent._active_experiment_id
    os.environ["MLFLOW_TRACKING_USERNAME"] = username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    try:
        with tracking_utils._use_tracking_uri(url):
            mlflow.set_registry_uri(url)
            yield mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    finally:
        registry_utils._registry_uri = saved_registry
        fluent._active_experiment_id = saved_experiment
        for name, value in saved_variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_python_json(code: str) -> dict[str, object]:
    """Run `code` in a fresh interpreter (as a service's `__main__` starts) and
    return the JSON object it printed."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def post_dataset(
    api: httpx.Client, body: bytes | IO[bytes], content_type: str = "text/csv", **params: str
) -> dict[str, Any]:
    """`POST /v1/datasets` through the gateway (`params`: displayName, newVersionOf...);
    the dataset it answers with, after checking the answer is a 200."""
    response = api.post(
        "/v1/datasets", params=params, content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    dataset: dict[str, Any] = response.json()
    return dataset


def wait_final(api: httpx.Client, path: str, timeout: float = 240) -> dict[str, Any]:
    """GET a job's REST path until its state is final; the job as last read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = api.get(path)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["state"] in FINAL_STATES:
            return job
        time.sleep(0.3)
    raise AssertionError(f"{path} still not final after {timeout}s")
