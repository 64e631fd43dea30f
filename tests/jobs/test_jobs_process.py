"""`python -m services.jobs` as a process: a clear exit when it cannot start, a clean
one on SIGTERM, open watches told to come back."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from devstack.components import NatsServer, postgres_available, start_nats
from devstack.processes import ManagedProcess, free_port
from devstack.stack import grpc_serving
from modelyard.jobs.v1.jobs_service_pb2 import CreateTrainingJobRequest, WatchTrainingJobRequest
from modelyard.jobs.v1.training_job_pb2 import TrainingJob
from runtime import nats_access
from runtime.db import create_engine, database_reachable
from runtime.errors import error_reason
from tests.jobs.jobs_support import (
    SERVICE_TOKEN,
    Doubles,
    eventually,
    jobs_settings,
    start_jobs,
)
from tests.tcp_cut import CuttableRelay

pytestmark = pytest.mark.slow


def jobs_process(tmp_path: Path, **env: str) -> ManagedProcess:
    return ManagedProcess(
        name="jobs",
        command=[sys.executable, "-m", "services.jobs"],
        env={
            "MODELYARD_SERVICE_TOKEN": SERVICE_TOKEN,
            "MODELYARD_STATE_DIR": str(tmp_path / "state"),
            "MODELYARD_SHUTDOWN_GRACE_SECONDS": "1",
            **env,
        },
        log_path=tmp_path / "jobs.log",
    ).start()


async def exit_code(process: ManagedProcess, within: float = 30) -> int:
    assert process.popen is not None
    try:
        return await asyncio.to_thread(process.popen.wait, within)
    finally:
        process.stop()


async def test_unreachable_nats_exits_with_a_clear_message(tmp_path: Path) -> None:
    nats_url = f"nats://127.0.0.1:{free_port()}"
    process = jobs_process(
        tmp_path,
        MODELYARD_JOBS_NATS_URL=nats_url,
        MODELYARD_JOBS_NATS_CONNECT_TIMEOUT_SECONDS="1",
        MODELYARD_JOBS_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    assert await exit_code(process) == 1
    log = process.log_path.read_text()
    assert f"cannot reach NATS at {nats_url}" in log
    assert "MODELYARD_JOBS_NATS_URL" in log


async def test_unreachable_database_exits_with_a_clear_message(tmp_path: Path) -> None:
    process = jobs_process(
        tmp_path,
        MODELYARD_JOBS_DATABASE_URL=f"postgresql://jobs:secret@127.0.0.1:{free_port()}/jobs",
        MODELYARD_JOBS_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    assert await exit_code(process) == 1
    log = process.log_path.read_text()
    assert "cannot open the jobs database at postgresql+asyncpg://jobs:***@" in log
    assert "secret" not in log


async def test_embedded_defaults_serve_and_sigterm_stops_cleanly(
    tmp_path: Path, jobs_nats: NatsServer
) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = jobs_process(
        tmp_path, **jobs_nats.env("JOBS", nats_access.JOBS), MODELYARD_JOBS_LISTEN_ADDRESS=address
    )
    try:
        await asyncio.to_thread(process.wait_until, lambda: grpc_serving(address), 60)
        assert (tmp_path / "state" / "jobs.db").exists()  # SQLite under the state dir
        # The state directory and the database in it are the owner's alone.
        modes = {
            path.name: stat.S_IMODE(path.stat().st_mode)
            for path in (tmp_path / "state", tmp_path / "state" / "jobs.db")
        }
        assert modes == {"state": 0o700, "jobs.db": 0o600}
    finally:
        assert process.stop() == 0


async def test_stopping_ends_open_watches_with_unavailable(
    tmp_path: Path, jobs_nats: NatsServer, jobs_database_url: str, doubles: Doubles
) -> None:
    settings = jobs_settings(tmp_path, jobs_database_url, jobs_nats, doubles)
    running, stop = await start_jobs(settings, doubles, jobs_nats)
    try:
        job = await running.stub.CreateTrainingJob(
            CreateTrainingJobRequest(dataset_id=doubles.datasets.add(), target_column="y"),
            timeout=10,
        )
        stream = running.stub.WatchTrainingJob(
            WatchTrainingJobRequest(job_id=job.job_id), timeout=30
        )
        assert (await stream.read()).training_job.state == TrainingJob.QUEUED
        assert running.app is not None
        stopping = asyncio.create_task(running.app.close())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "SERVER_SHUTTING_DOWN"
        await stopping
    finally:
        await stop()


async def serving_status(address: str, service: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def test_not_ready_while_nats_is_down_and_alive_all_along(
    tmp_path: Path, jobs_database_url: str, doubles: Doubles
) -> None:
    """/readyz asks JobsService's health: NOT_SERVING while NATS is down, SERVING when it is
    back; the server's own status stays SERVING, so a liveness probe restarts nothing."""
    nats_server = start_nats(tmp_path / "own-nats")
    settings = jobs_settings(tmp_path, jobs_database_url, nats_server, doubles)
    _running, stop = await start_jobs(settings, doubles, nats_server)
    address, service = settings.listen_address, "modelyard.jobs.v1.JobsService"
    try:
        assert await serving_status(address, service) == "SERVING"
        nats_server.process.stop()
        down = await eventually(lambda: serving_status(address, service), "NOT_SERVING".__eq__, 20)
        assert down == "NOT_SERVING"
        assert await serving_status(address, "") == "SERVING"
        nats_server.restart()
        back = await eventually(lambda: serving_status(address, service), "SERVING".__eq__, 30)
        assert back == "SERVING"
    finally:
        await stop()
        nats_server.process.stop()


@pytest.mark.skipif(
    not postgres_available(),
    reason="needs PostgreSQL: SQLite is a file inside the process and has no outage to stage",
)
async def test_not_ready_while_the_database_is_down(
    tmp_path: Path, jobs_database_url: str, jobs_nats: NatsServer, doubles: Doubles
) -> None:
    """The database is cut off under a running Jobs service (its pooled connections
    dropped, new ones refused): JobsService's health turns NOT_SERVING, so /readyz and
    readiness probes stop sending calls, while the server itself stays SERVING; it is
    SERVING again once the database answers."""
    url = make_url(jobs_database_url)
    relay = await CuttableRelay(url.host or "127.0.0.1", url.port or 5432).start()
    relayed_url = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    settings = jobs_settings(tmp_path, relayed_url, jobs_nats, doubles)
    _running, stop = await start_jobs(settings, doubles, jobs_nats)
    address, service = settings.listen_address, "modelyard.jobs.v1.JobsService"
    try:
        assert await serving_status(address, service) == "SERVING"
        await relay.cut()
        down = await eventually(lambda: serving_status(address, service), "NOT_SERVING".__eq__, 20)
        assert down == "NOT_SERVING"
        assert await serving_status(address, "") == "SERVING"
        await relay.mend()
        back = await eventually(lambda: serving_status(address, service), "SERVING".__eq__, 30)
        assert back == "SERVING"
    finally:
        await stop()
        await relay.cut()


async def test_an_unreachable_database_is_reported_not_reachable(tmp_path: Path) -> None:
    down = create_engine(f"postgresql://jobs@127.0.0.1:{free_port()}/jobs")
    up = create_engine(f"sqlite:///{tmp_path / 'up.db'}")
    try:
        assert (await database_reachable(down), await database_reachable(up)) == (False, True)
    finally:
        await down.dispose()
        await up.dispose()
