"""Fixtures of the Jobs service tests (helpers and doubles: jobs_support.py).

The Jobs service runs in-process against real infrastructure: its own
nats-server with JetStream (one per test module, so the streams, consumers and
cancel flags these tests leave behind never reach another area's tests, and a
test may restart it) and PostgreSQL through `database_url_factory` (SQLite when
`MODELYARD_TEST_JOBS_DATABASE=sqlite`, to run the same tests on the embedded
default).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from devstack.components import NatsServer, start_nats
from devstack.processes import free_port
from modelyard.dataset.v1 import dataset_service_pb2_grpc
from modelyard.training.v1 import trainer_service_pb2_grpc
from runtime.server import GrpcServer
from tests.jobs.jobs_support import (
    Doubles,
    FakeDatasetService,
    FakeTrainerService,
    RunningJobs,
    common_settings,
    jobs_settings,
    new_database_url,
    start_jobs,
)


@pytest.fixture(scope="module")
async def doubles(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Doubles]:
    settings = common_settings(tmp_path_factory.mktemp("doubles"))
    # The doubles implement only what the Jobs service calls.
    datasets = FakeDatasetService()  # type: ignore[abstract]
    trainer = FakeTrainerService()  # type: ignore[abstract]
    dataset_address = f"127.0.0.1:{free_port()}"
    trainer_address = f"127.0.0.1:{free_port()}"
    dataset_server = GrpcServer(settings, dataset_address)
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(datasets, dataset_server.server)
    trainer_server = GrpcServer(settings, trainer_address)
    trainer_service_pb2_grpc.add_TrainerServiceServicer_to_server(trainer, trainer_server.server)
    await dataset_server.start()
    await trainer_server.start()
    yield Doubles(datasets, trainer, dataset_address, trainer_address)
    await dataset_server.server.stop(0)
    await trainer_server.server.stop(0)


@pytest.fixture(scope="module")
def jobs_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_nats(tmp_path_factory.mktemp("jobs-nats"))
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def jobs_database_url(
    database_url_factory: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> str:
    return new_database_url(
        database_url_factory, tmp_path_factory.mktemp("jobs-db"), "modelyard_jobs_test"
    )


@pytest.fixture(scope="module")
async def jobs(
    tmp_path_factory: pytest.TempPathFactory,
    jobs_nats: NatsServer,
    jobs_database_url: str,
    doubles: Doubles,
) -> AsyncIterator[RunningJobs]:
    """The Jobs service, in-process, as a module shares it."""
    settings = jobs_settings(
        tmp_path_factory.mktemp("jobs-state"), jobs_database_url, jobs_nats, doubles
    )
    running, stop = await start_jobs(settings, doubles, jobs_nats)
    yield running
    await stop()
