"""The infrastructure a stack needs, each started on a free port of its own:
nats-server with JetStream, an MLflow tracking server with basic auth, moto's
S3-compatible server, and databases on the machine's PostgreSQL when it answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from devstack.processes import REPO_ROOT, ManagedProcess, free_port, port_open, venv_bin
from runtime import mlflow_setup, nats_access
from runtime.messaging import NatsCredentials, connect
from runtime.nats_setup import set_up

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"


@dataclass
class NatsServer:
    """nats-server with JetStream and one user per identity of runtime/nats_access.py
    (generated passwords); streams and buckets set up by the admin identity."""

    process: ManagedProcess
    port: int
    store_dir: Path
    passwords: dict[str, str]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def credentials(self, user: str = nats_access.ADMIN) -> NatsCredentials:
        return NatsCredentials(user, self.passwords[user])

    def env(self, prefix: str, user: str) -> dict[str, str]:
        """A service's NATS settings, e.g. env("JOBS", nats_access.JOBS)."""
        return {
            f"MODELYARD_{prefix}_NATS_URL": self.url,
            f"MODELYARD_{prefix}_NATS_USER": user,
            f"MODELYARD_{prefix}_NATS_PASSWORD": self.passwords[user],
        }

    def settings(self, user: str) -> dict[str, str]:
        """The same as settings-object fields (nats_url, nats_user, nats_password)."""
        return {"nats_url": self.url, "nats_user": user, "nats_password": self.passwords[user]}

    async def connect(self, user: str = nats_access.ADMIN) -> NatsClient:
        return await connect(self.url, f"devstack/{user}", self.credentials(user))

    def restart(self) -> None:
        self.process.stop()
        self.process.start()
        self.process.wait_until(lambda: port_open("127.0.0.1", self.port), timeout=30)


def start_nats(work_dir: Path) -> NatsServer:
    """Start nats-server with authentication and set up its streams and buckets.

    The configuration (with the passwords) and `nats-credentials.json` are written
    readable by their owner only.
    """
    port = free_port()
    store_dir = work_dir / "nats"
    passwords = {user: secrets.token_urlsafe(24) for user in nats_access.PERMISSIONS}
    config = work_dir / "nats-server.conf"
    write_private(
        config,
        f"listen: 127.0.0.1:{port}\n"
        f"jetstream {{store_dir: {json.dumps(str(store_dir))}}}\n"
        + nats_access.render_authorization(passwords),
    )
    write_private(work_dir / "nats-credentials.json", json.dumps(passwords, indent=2))
    process = ManagedProcess(
        name="nats-server",
        command=[venv_bin("nats-server"), "-c", str(config)],
        env={},
        log_path=work_dir / "logs" / "nats-server.log",
    ).start()
    process.wait_until(lambda: port_open("127.0.0.1", port), timeout=30)
    server = NatsServer(process=process, port=port, store_dir=store_dir, passwords=passwords)
    _run_coroutine(set_up(server.url, server.credentials()))
    return server


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, in a directory only its owner can enter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def _run_coroutine(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run to completion, also when called from inside a running event loop (a fixture)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()


@dataclass
class MlflowServer:
    """MLflow with basic auth. `username`/`password` are the admin's, for setup and for
    tests that inspect what the Trainer wrote; the Trainer gets `trainer_env()`."""

    process: ManagedProcess
    port: int
    username: str
    password: str
    trainer_username: str
    trainer_password: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trainer_env(self) -> dict[str, str]:
        """The Trainer's MLflow settings: its own user, never the admin."""
        return {
            "MODELYARD_TRAINER_MLFLOW_TRACKING_URI": self.url,
            "MODELYARD_TRAINER_MLFLOW_USERNAME": self.trainer_username,
            "MODELYARD_TRAINER_MLFLOW_PASSWORD": self.trainer_password,
        }


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow(
    work_dir: Path,
    *,
    password: str | None = None,
    trainer_password: str | None = None,
    backend_store_uri: str | None = None,
) -> MlflowServer:
    """MLflow with basic auth, artifacts stored locally and proxied by the server, and
    the setup step run (runtime/mlflow_setup.py): the Trainer's own user, granted the
    `modelyard` experiment; no user sees what it was not granted.

    The admin password is only set when the auth database is first created.
    """
    port = free_port()
    mlflow_dir = work_dir / "mlflow"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    password = password or "adm-" + secrets.token_urlsafe(18)
    auth_config = mlflow_dir / "basic_auth.ini"
    auth_config.write_text(
        textwrap.dedent(f"""\
            [mlflow]
            default_permission = {mlflow_setup.DEFAULT_PERMISSION}
            database_uri = sqlite:///{mlflow_dir / "auth.db"}
            admin_username = admin
            admin_password = {password}
            authorization_function = mlflow.server.auth:authenticate_request_basic_auth
            auth_cache_ttl_seconds = 60
            """)
    )
    auth_config.chmod(0o600)
    process = ManagedProcess(
        name="mlflow",
        command=[
            venv_bin("mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            # One process: Flask's handlers already run on a thread pool under uvicorn,
            # and each further worker imports the whole server again (~7 CPU-seconds,
            # paid by every stack a test starts).
            "--workers",
            "1",
            "--backend-store-uri",
            backend_store_uri or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(mlflow_dir / "artifacts"),
            "--serve-artifacts",
        ],
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        },
        log_path=work_dir / "logs" / "mlflow.log",
    ).start()
    process.wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), timeout=120)
    trainer_password = trainer_password or "trn-" + secrets.token_urlsafe(18)
    server = MlflowServer(
        process=process,
        port=port,
        username="admin",
        password=password,
        trainer_username=mlflow_setup.TRAINER_USERNAME,
        trainer_password=trainer_password,
    )
    try:
        mlflow_setup.set_up(
            server.url,
            (server.username, server.password),
            (server.trainer_username, server.trainer_password),
            ["modelyard"],
        )
    except BaseException:
        process.stop()
        raise
    return server


@dataclass
class S3Server:
    process: ManagedProcess
    port: int
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    region: str = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_s3(work_dir: Path) -> S3Server:
    """moto's server mode: a real S3 HTTP API, in memory."""
    port = free_port()
    process = ManagedProcess(
        name="moto-s3",
        command=[sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={},
        log_path=work_dir / "logs" / "moto.log",
    ).start()
    process.wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/moto-api/"), timeout=60)
    return S3Server(process=process, port=port)


def postgres_available() -> bool:
    return port_open(POSTGRES_HOST, POSTGRES_PORT)


def postgres_url(database: str) -> str:
    return f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"


def create_postgres_database(prefix: str) -> str:
    """A new, empty database on the machine's PostgreSQL; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))
    return postgres_url(name)


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin_execute(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, database="postgres"
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@dataclass
class DaskCluster:
    """`dask scheduler` and `dask worker` processes (each worker under its nanny)."""

    scheduler: ManagedProcess
    workers: list[ManagedProcess]
    port: int

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def pids(self) -> dict[str, int]:
        return {process.name: process.pid for process in self.processes()}

    def processes(self) -> list[ManagedProcess]:
        return [self.scheduler, *self.workers]

    def wait_for_workers(self, count: int, timeout: float = 90.0) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(count, timeout=timeout)

    def stop(self) -> None:
        for process in reversed(self.processes()):
            process.stop()


def start_dask(work_dir: Path, workers: int = 2, threads_per_worker: int = 1) -> DaskCluster:
    """A Dask scheduler and `workers` workers on 127.0.0.1, ready when every worker joined.

    Workers run from the repository (the Trainer's tasks import `services.training`)
    and get no credentials of any kind: the data they read comes as URLs the
    Dataset service gave out.
    """
    port = free_port()
    logs = work_dir / "logs"
    scheduler = ManagedProcess(
        name="dask-scheduler",
        command=[
            venv_bin("dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        env={},
        log_path=logs / "dask-scheduler.log",
    ).start()
    scheduler.wait_until(lambda: port_open("127.0.0.1", port), timeout=60)
    cluster = DaskCluster(scheduler=scheduler, workers=[], port=port)
    for index in range(1, workers + 1):
        cluster.workers.append(start_dask_worker(cluster, work_dir, index, threads_per_worker))
    cluster.wait_for_workers(workers)
    return cluster


def start_dask_worker(
    cluster: DaskCluster, work_dir: Path, index: int, threads: int = 1
) -> ManagedProcess:
    name = f"dask-worker-{index}"
    return ManagedProcess(
        name=name,
        command=[
            venv_bin("dask"),
            "worker",
            cluster.address,
            "--name",
            name,
            "--host",
            "127.0.0.1",
            "--nthreads",
            str(threads),
            "--memory-limit",
            "0",
            "--no-dashboard",
            "--local-directory",
            str(work_dir / "dask" / name),
        ],
        env={"PYTHONPATH": str(REPO_ROOT)},
        log_path=work_dir / "logs" / f"{name}.log",
    ).start()
