"""Fault injection with real processes: kill -9, restarts, dropped connections.

One stack for the module (two Trainers, a short ack wait so that a dead
Trainer's job comes back in seconds), PostgreSQL when it answers. Each test
leaves every process it killed running again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from devstack.components import postgres_available
from devstack.stack import Stack, StackOptions
from tests import suite_support
from tests.suite_support import FINAL_STATES, mlflow_client_of

pytestmark = [pytest.mark.fault, pytest.mark.slow]

ACK_WAIT_SECONDS = 4
SAMPLE = Path(__file__).resolve().parents[2] / "devstack" / "samples" / "iris.csv"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    trainer_env = {
        "MODELYARD_TRAINER_ACK_WAIT_SECONDS": str(ACK_WAIT_SECONDS),
        "MODELYARD_TRAINER_MAX_ATTEMPTS": "3",
    }
    options = StackOptions(
        work_dir=tmp_path_factory.mktemp("fault-stack"),
        database="postgresql" if postgres_available() else "sqlite",
        trainers=2,
        # An event in flight when NATS restarts is redelivered to Jobs after its ack
        # wait (30 s by default): the faults here are waited out in seconds.
        extra_env={
            "trainer": trainer_env,
            "jobs": {"MODELYARD_JOBS_EVENTS_ACK_WAIT_SECONDS": str(ACK_WAIT_SECONDS)},
        },
    )
    with Stack(options) as running:
        yield running


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def mlflow_client(stack: Stack) -> Iterator[MlflowClient]:
    assert stack.mlflow is not None
    with mlflow_client_of(stack.mlflow.url, stack.mlflow.username, stack.mlflow.password) as client:
        yield client


def upload(api: httpx.Client, path: Path) -> str:
    response = api.post(
        "/v1/datasets",
        params={"displayName": path.stem},
        content=path.read_bytes(),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["datasetId"])


@pytest.fixture(scope="module")
def slow_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough rows and iterations that training takes several seconds."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    rows = 60_000
    frame = pd.DataFrame(rng.normal(size=(rows, 12)), columns=[f"x{i}" for i in range(12)])
    frame["label"] = np.where(frame["x0"] + rng.normal(scale=2.0, size=rows) > 0, "yes", "no")
    path = tmp_path_factory.mktemp("fault-data") / "slow.csv"
    frame.to_csv(path, index=False)
    return path


SLOW_PARAMS = {"num_iterations": "600", "learning_rate": "0.01", "early_stopping_round": "0"}


def create_job(api: httpx.Client, dataset_id: str, target: str, **extra: Any) -> str:
    response = api.post(
        "/v1/trainingJobs",
        json={"datasetId": dataset_id, "targetColumn": target, **extra},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["jobId"])


def get_job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/trainingJobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_until(predicate: Any, timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(message)


def wait_final(api: httpx.Client, job_id: str, timeout: float = 300) -> dict[str, Any]:
    return suite_support.wait_final(api, f"/v1/trainingJobs/{job_id}", timeout)


def versions_of_job(client: MlflowClient, job_id: str) -> list[Any]:
    return list(client.search_model_versions(f"tags.job_id = '{job_id}'"))


def trainer_holding(stack: Stack, job_id: str) -> str:
    """The Trainer process that took the job, from the source of its `started` event."""
    source = asyncio.run(started_event_source(stack, job_id))  # trainer/<host>-<pid>
    pid = int(source.rsplit("-", 1)[1])
    for name, process in stack.processes.items():
        if name.startswith("trainer") and process.pid == pid:
            return name
    raise AssertionError(f"no trainer process has pid {pid} ({source})")


async def started_event_source(stack: Stack, job_id: str) -> str:

    from modelyard.dispatch.v1 import dispatch_pb2
    from runtime.messaging import job_events_subject

    assert stack.nats is not None
    connection = await stack.nats.connect()
    try:
        subscription = await connection.jetstream().subscribe(
            job_events_subject(job_id), ordered_consumer=True
        )
        while True:
            message = await subscription.next_msg(timeout=10)
            event = dispatch_pb2.JobEvent.FromString(message.data)
            if event.WhichOneof("kind") == "started":
                return event.source
    finally:
        await connection.close()


def test_trainer_killed_mid_training_job_succeeds_on_attempt_two(
    stack: Stack, api: httpx.Client, slow_csv: Path, mlflow_client: MlflowClient
) -> None:
    dataset_id = upload(api, slow_csv)
    job_id = create_job(api, dataset_id, "label", params=SLOW_PARAMS)
    wait_until(
        lambda: int(get_job(api, job_id).get("progress", {}).get("iteration", 0)) > 5,
        120,
        "job never made progress",
    )
    victim = trainer_holding(stack, job_id)
    stack.processes[victim].kill()
    try:
        job = wait_final(api, job_id)
        assert job["state"] == "SUCCEEDED", job.get("error")
        assert job["attempt"] == 2
        assert len(versions_of_job(mlflow_client, job_id)) == 1
    finally:
        # The next tests need both Trainers, whether or not this one passed.
        stack.start_service("trainer", instance=int(victim.partition("-")[2] or 0))


def test_jobs_killed_between_commit_and_publish_dispatches_after_restart(
    stack: Stack, api: httpx.Client
) -> None:
    dataset_id = upload(api, SAMPLE)
    stack.processes["jobs"].stop()
    crash_env = {"MODELYARD_JOBS_FAULT_CRASH_AFTER_COMMIT": "1"}
    stack.options.extra_env["jobs"] = crash_env
    stack.start_service("jobs")
    try:
        response = api.post(
            "/v1/trainingJobs",
            json={"datasetId": dataset_id, "targetColumn": "species", "requestId": "crash-1"},
        )
        assert response.status_code >= 500  # the Jobs service died mid-call
        wait_until(lambda: not stack.processes["jobs"].running(), 10, "jobs did not crash")
    finally:
        stack.options.extra_env.pop("jobs")
        stack.start_service("jobs")

    jobs = api.get("/v1/trainingJobs", params={"datasetId": dataset_id}).json()["trainingJobs"]
    assert len(jobs) == 1  # committed before the crash
    job = wait_final(api, jobs[0]["jobId"])
    assert job["state"] == "SUCCEEDED", job.get("error")
    # The client's retry with the same request_id finds that job, not a second one.
    retried = api.post(
        "/v1/trainingJobs",
        json={"datasetId": dataset_id, "targetColumn": "species", "requestId": "crash-1"},
    ).json()
    assert retried["jobId"] == job["jobId"]


def test_nats_restart_with_jobs_queued_and_running(stack: Stack, api: httpx.Client) -> None:
    assert stack.nats is not None
    dataset_id = upload(api, SAMPLE)
    slow = {"num_iterations": "300", "learning_rate": "0.01", "early_stopping_round": "0"}
    job_ids = [create_job(api, dataset_id, "species", params=slow) for _ in range(6)]
    wait_until(
        lambda: any(get_job(api, j)["state"] == "RUNNING" for j in job_ids), 60, "none running"
    )
    stack.nats.restart()

    finals = [wait_final(api, job_id) for job_id in job_ids]
    assert [job["state"] for job in finals] == ["SUCCEEDED"] * len(job_ids)


@pytest.mark.skipif(not postgres_available(), reason="needs the machine's PostgreSQL")
def test_postgres_connections_dropped_mid_run(stack: Stack, api: httpx.Client) -> None:
    dataset_id = upload(api, SAMPLE)
    first = create_job(api, dataset_id, "species")
    asyncio.run(terminate_backends(list(stack.database_urls.values())))

    # The very next calls may meet a dead pooled connection once; they must not fail.
    second = create_job(api, dataset_id, "species")
    assert get_job(api, first)["jobId"] == first
    asyncio.run(terminate_backends(list(stack.database_urls.values())))
    assert wait_final(api, first)["state"] == "SUCCEEDED"
    assert wait_final(api, second)["state"] == "SUCCEEDED"
    assert all(stack.processes[name].running() for name in ("dataset", "jobs", "gateway"))


async def terminate_backends(database_urls: list[str]) -> None:
    import asyncpg

    names = [url.rsplit("/", 1)[1] for url in database_urls]
    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        terminated = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()",
            names,
        )
        assert terminated, "no connections to terminate"
    finally:
        await connection.close()


def count_final(api: httpx.Client, dataset_id: str) -> int:
    jobs = api.get("/v1/trainingJobs", params={"datasetId": dataset_id, "pageSize": 1000})
    return sum(job["state"] in FINAL_STATES for job in jobs.json().get("trainingJobs", []))


# Twenty-four jobs, a Trainer killed after a fifth of them and again after a little
# over half: each kill finds jobs running and others queued, as two hundred did (at
# an eighth of the time), and every job must still succeed exactly once.
BURST_JOBS = 24
FINISHED_BEFORE_EACH_KILL = (5, 13)


@pytest.mark.timeout(600)
def test_burst_of_jobs_with_a_trainer_killed_twice(
    stack: Stack, api: httpx.Client, mlflow_client: MlflowClient
) -> None:
    dataset_id = upload(api, SAMPLE)
    job_ids = [create_job(api, dataset_id, "species") for _ in range(BURST_JOBS)]

    for finished_before_kill in FINISHED_BEFORE_EACH_KILL:
        wait_until(
            lambda n=finished_before_kill: count_final(api, dataset_id) >= n,
            400,
            "burst not progressing",
        )
        stack.processes["trainer"].kill()
        stack.start_service("trainer")

    finals = {job_id: wait_final(api, job_id, timeout=600) for job_id in job_ids}
    states = collections.Counter(job["state"] for job in finals.values())
    assert states["SUCCEEDED"] == len(job_ids), states
    model_name = finals[job_ids[0]]["mlflow"]["registeredModelName"]
    registered: collections.Counter[str] = collections.Counter()
    for version in mlflow_client.search_model_versions(f"name = '{model_name}'", max_results=1000):
        registered[version.tags.get("job_id", "")] += 1
    assert all(registered[job_id] == 1 for job_id in job_ids), registered.most_common(3)
    versions = {int(job["mlflow"]["registeredModelVersion"]) for job in finals.values()}
    assert len(versions) == len(job_ids)  # one version each, none shared


SCORED_ROWS = 400_000  # several record batches of a 600-tree model: seconds of scoring


@pytest.fixture(scope="module")
def scoring_setup(
    stack: Stack, slow_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """A 600-tree model `fault-scoring`, and a stored dataset of SCORED_ROWS rows for it."""
    import numpy as np
    import pandas as pd

    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=300) as api:
        dataset_id = upload(api, slow_csv)
        model_job = create_job(
            api, dataset_id, "label", params=SLOW_PARAMS, registeredModelName="fault-scoring"
        )
        assert wait_final(api, model_job)["state"] == "SUCCEEDED"
        rng = np.random.default_rng(11)
        columns = [f"x{i}" for i in range(12)]
        frame = pd.DataFrame(rng.normal(size=(SCORED_ROWS, 12)), columns=columns)
        parquet = tmp_path_factory.mktemp("fault-scoring") / "to-score.parquet"
        frame.to_parquet(parquet, index=False)
        uploaded = api.post(
            "/v1/datasets",
            params={"displayName": "fault-to-score"},
            content=parquet.read_bytes(),
            headers={"Content-Type": "application/vnd.apache.parquet"},
        )
        assert uploaded.status_code == 200, uploaded.text
    return {"model": "fault-scoring", "dataset_id": str(uploaded.json()["datasetId"])}


def start_scoring(api: httpx.Client, setup: dict[str, str], output_name: str) -> str:
    """A scoring job, once it has reported its first record batch."""
    created = api.post(
        "/v1/scoringJobs",
        json={
            "datasetId": setup["dataset_id"],
            "modelName": setup["model"],
            "outputDisplayName": output_name,
        },
    )
    assert created.status_code == 200, created.text
    job_id = str(created.json()["jobId"])
    wait_until(
        lambda: int(scoring_job(api, job_id).get("progress", {}).get("rowsDone", 0)) > 0,
        180,
        "the scoring job never reported rows done",
    )
    return job_id


def scoring_job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = api.get(f"/v1/scoringJobs/{job_id}").json()
    return job


def wait_scoring_final(api: httpx.Client, job_id: str) -> dict[str, Any]:
    return suite_support.wait_final(api, f"/v1/scoringJobs/{job_id}", 300)


def datasets_named(api: httpx.Client, name: str) -> list[str]:
    listed = api.get("/v1/datasets", params={"displayNameContains": name}).json()
    return [d["datasetId"] for d in listed.get("datasets", [])]


def test_trainer_killed_mid_scoring_job_scores_again_on_attempt_two(
    stack: Stack, api: httpx.Client, scoring_setup: dict[str, str]
) -> None:
    """A scoring job whose Trainer dies after its first record batch is delivered again
    (ack wait), scored whole by the other Trainer, and stored once."""
    job_id = start_scoring(api, scoring_setup, "fault-scored")
    victim = trainer_holding(stack, job_id)
    stack.processes[victim].kill()
    try:
        job = wait_scoring_final(api, job_id)
        assert job["state"] == "SUCCEEDED", job.get("error")
        assert job["attempt"] == 2
        assert int(job["output"]["rowsScored"]) == SCORED_ROWS
        assert datasets_named(api, "fault-scored") == [job["output"]["datasetId"]]
    finally:
        stack.start_service("trainer", instance=int(victim.partition("-")[2] or 0))


def test_a_running_scoring_job_cancelled_stops_and_stores_nothing(
    api: httpx.Client, scoring_setup: dict[str, str]
) -> None:
    job_id = start_scoring(api, scoring_setup, "fault-cancelled-scoring")
    cancelled = api.post(f"/v1/scoringJobs/{job_id}:cancel", json={})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] in ("CANCELLING", "CANCELLED")

    job = wait_scoring_final(api, job_id)
    assert job["state"] == "CANCELLED"
    assert int(job["progress"]["rowsDone"]) < SCORED_ROWS  # stopped between batches
    assert "output" not in job
    assert datasets_named(api, "fault-cancelled-scoring") == []
