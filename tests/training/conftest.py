"""Fixtures for the Trainer's tests.

The Trainer runs as the real process (`python -m services.training`) against
the real NATS and MLflow (basic auth) servers of the session. DatasetService
is being built elsewhere, so a small in-test gRPC server stands in for it:
GetDataset and ReadDataset (an Arrow IPC stream, schema first, then one record
batch per response) over DataFrames read from CSV files, typed as the
contract says (INTEGER → int64, FLOAT → float64, STRING → string, ...)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from devstack.components import MlflowServer, NatsServer
from devstack.processes import free_port
from modelyard.dataset.v1 import dataset_service_pb2_grpc
from modelyard.jobs.v1 import (
    jobs_service_pb2_grpc,
)
from tests.suite_support import mlflow_client_of
from tests.training.training_support import (
    Bus,
    DatasetServer,
    FakeDatasetService,
    FakeJobsService,
    TrainerProcess,
    messy_frame,
    start_trainer,
)


@pytest.fixture(scope="session")
def dataset_server() -> Iterator[DatasetServer]:
    service = FakeDatasetService()  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(service, server)
    jobs = FakeJobsService()  # type: ignore[abstract]
    jobs_service_pb2_grpc.add_JobsServiceServicer_to_server(jobs, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    yield DatasetServer(service, address, server, jobs)
    server.stop(grace=None)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("trainer-data")
    messy_frame().to_csv(directory / "messy.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def trainer(
    tmp_path_factory: pytest.TempPathFactory,
    nats_server: NatsServer,
    mlflow_server: MlflowServer,
    dataset_server: DatasetServer,
) -> Iterator[TrainerProcess]:
    work_dir = tmp_path_factory.mktemp("trainer")
    process = start_trainer(work_dir, nats_server, mlflow_server, dataset_server.address)
    yield process
    process.stop()


@pytest_asyncio.fixture(scope="session")
async def bus(nats_server: NatsServer, dataset_server: DatasetServer) -> AsyncIterator[Bus]:
    nc = await nats_server.connect()
    yield Bus(nc, dataset_server.jobs)
    await nc.close()


@pytest.fixture(scope="session")
def mlflow_client(mlflow_server: MlflowServer) -> Iterator[Any]:
    """An MLflow client with the server's credentials, for assertions (the fluent
    API points at the same server while the session lasts)."""
    with mlflow_client_of(
        mlflow_server.url, mlflow_server.username, mlflow_server.password
    ) as client:
        yield client
