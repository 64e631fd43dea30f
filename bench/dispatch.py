"""Dispatch benchmark: how fast a job starts, how many jobs the Jobs service
takes per second, and how much GET load the gateway carries.

    .venv/bin/python -m bench.dispatch [--latency-jobs 100] [--create-seconds 10]

Runs a real stack (nats-server, MLflow with basic auth, PostgreSQL when it
answers, the services, one Trainer and the gateway with auth on) and prints:

1. submit → RUNNING latency, p50 / p99, with an idle Trainer (job created over
   gRPC, RUNNING observed through WatchTrainingJob);
2. CreateTrainingJob throughput over gRPC (32 concurrent callers); the jobs it
   queued are then cancelled, and left to drain (the Trainer skips each one and
   reports it, Jobs applies the reports) before step 3;
3. `GET /v1/trainingJobs/{id}` through the gateway at 16 concurrent clients,
   side by side with the MLflow tracking server's `GET /api/2.0/mlflow/runs/get`
   on the same machine, in the same run (wrk when installed, else a Python client).

Targets: submit → RUNNING p99 ≤ 100 ms; create ≥ 300 jobs/s; gateway GET
≥ 1,000 requests/s with p99 ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from devstack.components import postgres_available
from devstack.stack import Stack, StackOptions
from modelyard.jobs.v1 import jobs_service_pb2, jobs_service_pb2_grpc, training_job_pb2
from runtime.channels import open_channel
from runtime.messaging import (
    JOB_EVENTS_STREAM,
    JOBS_EVENTS_CONSUMER,
    TRAINERS_CONSUMER,
    TRAINING_REQUESTS_STREAM,
)
from runtime.settings import CommonSettings

SAMPLE = Path(__file__).resolve().parent.parent / "devstack" / "samples" / "iris.csv"
State = training_job_pb2.TrainingJob.State
FINAL = {State.SUCCEEDED, State.FAILED, State.CANCELLED}
DRAIN_TIMEOUT_SECONDS = 300


Row = tuple[str, str, str, str]  # measure, measured, target, verdict


@dataclass
class LoadResult:
    tool: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def jobs_stub(stack: Stack) -> tuple[object, jobs_service_pb2_grpc.JobsServiceStub]:
    settings = CommonSettings(service_token=stack.service_token)
    channel = open_channel(stack.addresses["jobs"], settings)
    return channel, jobs_service_pb2_grpc.JobsServiceStub(channel)


async def submit_to_running(stack: Stack, dataset_id: str, jobs: int) -> list[float]:
    """Milliseconds from calling CreateTrainingJob to the job's RUNNING update."""
    channel, stub = jobs_stub(stack)
    latencies: list[float] = []
    for _ in range(jobs):
        started = time.perf_counter()
        job = await stub.CreateTrainingJob(
            jobs_service_pb2.CreateTrainingJobRequest(
                dataset_id=dataset_id, target_column="species"
            ),
            timeout=10,
        )
        running_at = None
        watch = stub.WatchTrainingJob(
            jobs_service_pb2.WatchTrainingJobRequest(job_id=job.job_id), timeout=300
        )
        async for update in watch:
            state = update.training_job.state
            if running_at is None and state != State.QUEUED:
                running_at = time.perf_counter()
            if state in FINAL:
                break
        assert running_at is not None
        latencies.append((running_at - started) * 1000)
    await channel.close()  # type: ignore[attr-defined]
    return latencies


async def create_throughput(
    stack: Stack, dataset_id: str, seconds: float, callers: int = 32
) -> tuple[float, int, list[str]]:
    channel, stub = jobs_stub(stack)
    created: list[str] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            try:
                job = await stub.CreateTrainingJob(
                    jobs_service_pb2.CreateTrainingJobRequest(
                        dataset_id=dataset_id, target_column="species"
                    ),
                    timeout=10,
                )
                created.append(job.job_id)
            except Exception:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - began
    await channel.close()  # type: ignore[attr-defined]
    return len(created) / elapsed, errors, created


async def cancel_all(stack: Stack, job_ids: list[str]) -> None:
    """Leave the Trainer idle again: cancel what the throughput phase queued."""
    channel, stub = jobs_stub(stack)
    semaphore = asyncio.Semaphore(32)

    async def cancel(job_id: str) -> None:
        async with semaphore:
            with contextlib.suppress(grpc.aio.AioRpcError):  # already final: nothing to do
                await stub.CancelTrainingJob(
                    jobs_service_pb2.CancelTrainingJobRequest(job_id=job_id), timeout=10
                )

    await asyncio.gather(*(cancel(job_id) for job_id in job_ids))
    await channel.close()  # type: ignore[attr-defined]


async def wait_until_quiet(stack: Stack) -> None:
    """Let the backlog of cancelled jobs drain before the GET load: the Trainer skips
    each one and reports it, and Jobs applies each report. The load figures are those
    of a quiet stack, not of one working through thousands of messages."""
    assert stack.nats is not None
    nc = await stack.nats.connect()
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            consumers = [
                await js.consumer_info(TRAINING_REQUESTS_STREAM, TRAINERS_CONSUMER),
                await js.consumer_info(JOB_EVENTS_STREAM, JOBS_EVENTS_CONSUMER),
            ]
            if all(info.num_pending == 0 and info.num_ack_pending == 0 for info in consumers):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError("the cancelled jobs did not drain")
    finally:
        await nc.close()


def wrk_load(url: str, header: str, seconds: int, connections: int) -> LoadResult:
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", header, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert match, output
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    assert rate, output
    return LoadResult(
        "wrk",
        float(rate.group(1)),
        latency("50"),
        latency("99"),
        int(non_2xx.group(1)) if non_2xx else 0,
    )


async def python_load(url: str, header: str, seconds: int, connections: int) -> LoadResult:
    name, _, value = header.partition(": ")
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(headers={name: value}, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                response = await client.get(url)
                latencies.append((time.perf_counter() - began) * 1000)
                errors += response.status_code != 200

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    return LoadResult(
        "python",
        len(latencies) / elapsed,
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        errors,
    )


def http_load(url: str, header: str, seconds: int = 10, connections: int = 16) -> LoadResult:
    if shutil.which("wrk"):
        return wrk_load(url, header, seconds, connections)
    return asyncio.run(python_load(url, header, seconds, connections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--create-seconds", type=float, default=10.0)
    parser.add_argument("--load-seconds", type=int, default=10)
    args = parser.parse_args()

    database = "postgresql" if postgres_available() else "sqlite"
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as work_dir:
        options = StackOptions(work_dir=Path(work_dir), database=database)
        with Stack(options) as stack:
            assert stack.mlflow is not None
            auth = {"Authorization": f"Bearer {stack.api_token}"}
            with httpx.Client(base_url=stack.gateway_url, headers=auth, timeout=60) as api:
                dataset_id = api.post(
                    "/v1/datasets",
                    params={"displayName": "iris"},
                    content=SAMPLE.read_bytes(),
                    headers={"Content-Type": "text/csv"},
                ).json()["datasetId"]

            latencies = asyncio.run(submit_to_running(stack, dataset_id, args.latency_jobs))
            rate, create_errors, created = asyncio.run(
                create_throughput(stack, dataset_id, args.create_seconds)
            )
            asyncio.run(cancel_all(stack, created))
            asyncio.run(wait_until_quiet(stack))

            with httpx.Client(base_url=stack.gateway_url, headers=auth, timeout=60) as api:
                listed = api.get("/v1/trainingJobs", params={"state": "SUCCEEDED"}).json()
            job = listed["trainingJobs"][0]
            gateway = http_load(
                f"{stack.gateway_url}/v1/trainingJobs/{job['jobId']}",
                f"Authorization: Bearer {stack.api_token}",
                args.load_seconds,
            )
            basic = base64.b64encode(
                f"{stack.mlflow.username}:{stack.mlflow.password}".encode()
            ).decode()
            mlflow_runs_get = http_load(
                f"{stack.mlflow.url}/api/2.0/mlflow/runs/get?run_id={job['mlflow']['runId']}",
                f"Authorization: Basic {basic}",
                args.load_seconds,
            )

    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    rows: list[Row] = [
        (f"submit → RUNNING p50 ({len(latencies)} jobs)", f"{p50:.1f} ms", "", ""),
        ("submit → RUNNING p99", f"{p99:.1f} ms", "≤ 100 ms", verdict(p99 <= 100)),
        ("submit → RUNNING max", f"{max(latencies):.1f} ms", "", ""),
        (
            "CreateTrainingJob over gRPC (32 callers)",
            f"{rate:.0f} jobs/s",
            "≥ 300 jobs/s",
            verdict(rate >= 300),
        ),
    ]
    if create_errors:
        rows.append(("  create errors", str(create_errors), "0", verdict(False)))
    rows += load_rows("gateway GET /v1/trainingJobs/{id}", gateway, targets=True)
    rows += load_rows("MLflow GET /api/2.0/mlflow/runs/get (baseline)", mlflow_runs_get)

    print()
    print(f"dispatch benchmark — {database}, 1 Trainer, {os.cpu_count()} cores")
    print(f"{'measure':56} {'measured':>16} {'target':>14}  verdict")
    print("-" * 98)
    for measure, measured, target, met in rows:
        print(f"{measure:56} {measured:>16} {target:>14}  {met}")


def verdict(met: bool) -> str:
    return "met" if met else "MISS"


def load_rows(label: str, result: LoadResult, targets: bool = False) -> list[Row]:
    """Throughput and latency of one load run; the gateway's rows carry its targets."""
    rate, p99 = result.requests_per_second, result.p99_ms
    rate_target, p99_target = ("≥ 1000 req/s", "≤ 50 ms") if targets else ("", "")
    rows: list[Row] = [
        (
            f"{label} [{result.tool}, 16 conns]",
            f"{rate:.0f} req/s",
            rate_target,
            verdict(rate >= 1000) if targets else "",
        ),
        ("  p50", f"{result.p50_ms:.1f} ms", "", ""),
        ("  p99", f"{p99:.1f} ms", p99_target, verdict(p99 <= 50) if targets else ""),
    ]
    if result.errors:
        rows.append(("  non-200 responses", str(result.errors), "0", verdict(False)))
    return rows


if __name__ == "__main__":
    main()
