"""A whole modelyard stack on one machine: infrastructure, the three services
and the gateway, each a real process on free ports.

    with Stack(StackOptions(work_dir=tmp)) as stack:
        stack.gateway_url, stack.api_token, stack.jobs_address, ...
"""

from __future__ import annotations

import json
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from devstack.components import (
    DaskCluster,
    MlflowServer,
    NatsServer,
    S3Server,
    create_postgres_database,
    drop_postgres_database,
    start_dask,
    start_mlflow,
    start_nats,
    start_s3,
)
from devstack.processes import ManagedProcess, free_port, port_open
from devstack.tls import Tls
from runtime import nats_access
from runtime.healthcheck import check
from runtime.secrets import private_directory
from runtime.settings import CommonSettings

SERVICE_MODULES = {
    "dataset": "services.dataset",
    "jobs": "services.jobs",
    "trainer": "services.training",
}
ENV_PREFIXES = {"dataset": "DATASET", "jobs": "JOBS", "trainer": "TRAINER"}


@dataclass
class StackOptions:
    work_dir: Path
    # "sqlite" (embedded default) or "postgresql" (the machine's server).
    database: str = "sqlite"
    # "local" (embedded default) or "s3" (moto's S3 server).
    blob_store: str = "local"
    trainers: int = 1
    dev_mode: bool = False
    # Gateway port to use when it is free (a free port otherwise); 0 = any free port.
    preferred_gateway_port: int = 0
    # Keep tokens and the MLflow admin password in <work_dir>/secrets.json, so that a
    # stack restarted on the same work_dir (make down; make up) finds its data again.
    persist_secrets: bool = False
    # OTLP/HTTP collector every process exports its spans to; tracing is off when None.
    otlp_endpoint: str | None = None
    # Mutual TLS between every gRPC server and client (the gateway's HTTP side stays plain).
    tls: Tls | None = None
    # Extra environment per process name ("dataset", "jobs", "trainer", "gateway").
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Dask workers to start with a Dask scheduler (0: no Dask cluster); the Trainer then
    # trains datasets of at least `dask_min_rows` rows on it (its default when None).
    dask_workers: int = 0
    dask_min_rows: int | None = None


def grpc_serving(address: str, tls: Tls | None = None) -> bool:
    settings = tls.settings() if tls else CommonSettings(service_token="-")
    return check(address, settings=settings, timeout=1.0) == "SERVING"


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.work_dir = options.work_dir.resolve()
        self.secrets = self._load_secrets()
        self.service_token = self.secrets["service_token"]
        self.api_token = self.secrets["api_token"]
        self.nats: NatsServer | None = None
        self.mlflow: MlflowServer | None = None
        self.s3: S3Server | None = None
        self.dask: DaskCluster | None = None
        self.processes: dict[str, ManagedProcess] = {}
        self.addresses: dict[str, str] = {}
        self.metrics_addresses: dict[str, str] = {}
        self.database_urls: dict[str, str] = {}
        self.gateway_port = 0

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _load_secrets(self) -> dict[str, str]:
        path = self.work_dir / "secrets.json"
        if self.options.persist_secrets and path.exists():
            loaded: dict[str, str] = json.loads(path.read_text())
            if "mlflow_trainer_password" not in loaded:  # kept from before the Trainer's user
                loaded["mlflow_trainer_password"] = "trn-" + secrets.token_urlsafe(18)
                path.write_text(json.dumps(loaded))
            return loaded
        fresh = {
            "service_token": secrets.token_urlsafe(24),
            "api_token": secrets.token_urlsafe(24),
            "mlflow_admin_password": "adm-" + secrets.token_urlsafe(18),
            "mlflow_trainer_password": "trn-" + secrets.token_urlsafe(18),
        }
        if self.options.persist_secrets:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(fresh))
            path.chmod(0o600)
        return fresh

    def start(self) -> None:
        """Everything up, MLflow's start (its slowest part) overlapping the others'."""
        # Secrets, credentials and databases live here: the owner's alone.
        private_directory(self.work_dir)
        self.nats = start_nats(self.work_dir)
        with ThreadPoolExecutor(1, thread_name_prefix="start-mlflow") as pool:
            mlflow_started = pool.submit(
                start_mlflow,
                self.work_dir,
                password=self.secrets["mlflow_admin_password"],
                trainer_password=self.secrets["mlflow_trainer_password"],
            )
            try:
                self._start_what_needs_no_mlflow()
            finally:
                self.mlflow = mlflow_started.result()
        # The Trainer signs in to MLflow as the user MLflow's setup step made.
        trainers = [
            self._launch_service("trainer", instance=index)
            for index in range(self.options.trainers)
        ]
        gateway = self._launch_gateway()
        for name in trainers:
            self._wait_serving(name)
        self._wait_gateway(gateway)
        self.write_state()

    def _start_what_needs_no_mlflow(self) -> None:
        if self.options.blob_store == "s3":
            self.s3 = start_s3(self.work_dir)
        if self.options.dask_workers:
            self.dask = start_dask(self.work_dir, self.options.dask_workers)
        for service in ("dataset", "jobs"):
            if self.options.database == "postgresql":
                self.database_urls[service] = create_postgres_database(f"modelyard_{service}")
            else:
                self.database_urls[service] = f"sqlite:///{self.work_dir / service}.db"
        # Each calls the other: Jobs checks parameters with the Trainer, the Trainer asks
        # Jobs whether a job exists before training it.
        self.addresses["trainer"] = f"127.0.0.1:{free_port()}"
        self.addresses["jobs"] = f"127.0.0.1:{free_port()}"
        for name in [self._launch_service("dataset"), self._launch_service("jobs")]:
            self._wait_serving(name)

    def stop(self) -> None:
        """The services first (they may still call the rest while shutting down), then
        the rest; each group stopped together."""
        _stop_together(list(self.processes.values()))
        if self.dask is not None:
            self.dask.stop()
        _stop_together(
            [component.process for component in (self.s3, self.mlflow, self.nats) if component]
        )
        if self.options.database == "postgresql":
            for url in self.database_urls.values():
                drop_postgres_database(url)
            self.database_urls.clear()

    # -- services ----------------------------------------------------------------

    def common_env(self) -> dict[str, str]:
        env = {
            "MODELYARD_SERVICE_TOKEN": self.service_token,
            "MODELYARD_STATE_DIR": str(self.work_dir / "state"),
            "MODELYARD_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        if self.options.otlp_endpoint:
            env["MODELYARD_OTLP_ENDPOINT"] = self.options.otlp_endpoint
        if self.options.tls:
            env |= self.options.tls.env()
        return env

    def service_env(self, service: str, address: str) -> dict[str, str]:
        assert self.nats is not None
        if service == "dataset":
            env = {
                "MODELYARD_DATASET_LISTEN_ADDRESS": address,
                "MODELYARD_DATASET_JOBS_SERVICE_ADDRESS": self.addresses["jobs"],
                "MODELYARD_DATASET_DATABASE_URL": self.database_urls["dataset"],
                "MODELYARD_DATASET_BLOB_STORE": self.options.blob_store,
                "MODELYARD_DATASET_BLOB_DIR": str(self.work_dir / "blobs"),
            }
            if self.s3 is not None:
                env |= {
                    "MODELYARD_DATASET_S3_BUCKET": "modelyard-datasets",
                    "MODELYARD_DATASET_S3_ENDPOINT_URL": self.s3.endpoint_url,
                    "MODELYARD_DATASET_S3_REGION": self.s3.region,
                    "AWS_ACCESS_KEY_ID": self.s3.access_key_id,
                    "AWS_SECRET_ACCESS_KEY": self.s3.secret_access_key,
                }
        elif service == "jobs":
            env = {
                "MODELYARD_JOBS_LISTEN_ADDRESS": address,
                "MODELYARD_JOBS_DATABASE_URL": self.database_urls["jobs"],
                **self.nats.env("JOBS", nats_access.JOBS),
                "MODELYARD_JOBS_DATASET_SERVICE_ADDRESS": self.addresses["dataset"],
                "MODELYARD_JOBS_TRAINER_SERVICE_ADDRESS": self.addresses["trainer"],
            }
        elif service == "trainer":
            assert self.mlflow is not None
            env = {
                "MODELYARD_TRAINER_LISTEN_ADDRESS": address,
                **self.nats.env("TRAINER", nats_access.TRAINER),
                "MODELYARD_TRAINER_DATASET_SERVICE_ADDRESS": self.addresses["dataset"],
                "MODELYARD_TRAINER_JOBS_SERVICE_ADDRESS": self.addresses["jobs"],
                **self.mlflow.trainer_env(),
                "MODELYARD_TRAINER_WORK_DIR": str(self.work_dir / "trainer"),
                "MLFLOW_DISABLE_TELEMETRY": "true",
            }
            if self.dask is not None:
                env["MODELYARD_TRAINER_DASK_SCHEDULER_ADDRESS"] = self.dask.address
                if self.options.dask_min_rows is not None:
                    env["MODELYARD_TRAINER_DASK_MIN_ROWS"] = str(self.options.dask_min_rows)
        else:
            raise ValueError(f"unknown service {service}")
        return env | self.options.extra_env.get(service, {})

    def start_service(self, service: str, instance: int = 0) -> ManagedProcess:
        """Start (or restart) one service process and wait until it is SERVING."""
        name = self._launch_service(service, instance)
        self._wait_serving(name)
        return self.processes[name]

    def _launch_service(self, service: str, instance: int = 0) -> str:
        """Start one service process (not waiting for it); its name."""
        name = service if instance == 0 else f"{service}-{instance}"
        address = self.addresses.get(name) or f"127.0.0.1:{free_port()}"
        self.addresses[name] = address
        metrics = self.metrics_addresses.get(name) or f"127.0.0.1:{free_port()}"
        self.metrics_addresses[name] = metrics
        metrics_env = {f"MODELYARD_{ENV_PREFIXES[service]}_METRICS_ADDRESS": metrics}
        self.processes[name] = ManagedProcess(
            name=name,
            command=[sys.executable, "-m", SERVICE_MODULES[service]],
            env=self.common_env() | self.service_env(service, address) | metrics_env,
            log_path=self.work_dir / "logs" / f"{name}.log",
        ).start()
        return name

    def _wait_serving(self, name: str) -> None:
        address = self.addresses[name]
        self.processes[name].wait_until(
            lambda: grpc_serving(address, self.options.tls), timeout=120
        )

    def gateway_env(self) -> dict[str, str]:
        env = {
            "MODELYARD_GATEWAY_PORT": str(self.gateway_port),
            "MODELYARD_GATEWAY_METRICS_ADDRESS": self.metrics_addresses.setdefault(
                "gateway", f"127.0.0.1:{free_port()}"
            ),
            "MODELYARD_GATEWAY_HOST": "127.0.0.1",
            "MODELYARD_GATEWAY_DATASET_SERVICE_ADDRESS": self.addresses["dataset"],
            "MODELYARD_GATEWAY_JOBS_SERVICE_ADDRESS": self.addresses["jobs"],
            "MODELYARD_GATEWAY_TRAINER_SERVICE_ADDRESS": self.addresses["trainer"],
            "MODELYARD_GATEWAY_API_TOKENS": self.api_token,
            "MODELYARD_GATEWAY_DEV_MODE": "true" if self.options.dev_mode else "false",
        }
        return env | self.options.extra_env.get("gateway", {})

    def start_gateway(self) -> ManagedProcess:
        process = self._launch_gateway()
        self._wait_gateway(process)
        return process

    def _launch_gateway(self) -> ManagedProcess:
        if not self.gateway_port:
            preferred = self.options.preferred_gateway_port
            free = preferred and not port_open("127.0.0.1", preferred)
            self.gateway_port = preferred if free else free_port()
        process = ManagedProcess(
            name="gateway",
            command=[sys.executable, "-m", "gateway"],
            env=self.common_env() | self.gateway_env(),
            log_path=self.work_dir / "logs" / "gateway.log",
        ).start()
        self.processes["gateway"] = process
        return process

    def _wait_gateway(self, process: ManagedProcess) -> None:
        process.wait_until(lambda: port_open("127.0.0.1", self.gateway_port), timeout=60)

    # -- what clients need ---------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def logs(self, name: str) -> str:
        return (self.work_dir / "logs" / f"{name}.log").read_text(errors="replace")

    def write_state(self) -> None:
        state = {
            "gateway_url": self.gateway_url,
            "api_token": self.api_token,
            "service_token": self.service_token,
            "addresses": self.addresses,
            "mlflow_url": self.mlflow.url if self.mlflow else None,
            "nats_url": self.nats.url if self.nats else None,
            "pids": {name: p.pid for name, p in self.processes.items()}
            | {
                c.process.name: c.process.pid
                for c in (self.nats, self.mlflow, self.s3)
                if c is not None
            }
            | (self.dask.pids() if self.dask is not None else {}),
        }
        path = self.work_dir / "stack.json"
        path.write_text(json.dumps(state, indent=2))
        path.chmod(0o600)


def _stop_together(processes: list[ManagedProcess]) -> None:
    with ThreadPoolExecutor(max(1, len(processes)), thread_name_prefix="stop") as pool:
        list(pool.map(ManagedProcess.stop, processes))
