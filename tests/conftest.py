"""Fixtures shared by the whole suite: real infrastructure on free ports.

Every process a fixture starts is stopped when its scope ends. PostgreSQL is
the machine's own server when it answers on 127.0.0.1:5432 (a fresh database
per use, dropped afterwards); SQLite otherwise, so the suite runs on a bare
machine too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdist.remote import Producer

from devstack.components import (
    MlflowServer,
    NatsServer,
    S3Server,
    create_postgres_database,
    drop_postgres_database,
    postgres_available,
    start_mlflow,
    start_nats,
    start_s3,
)
from tests.parallel_groups import SuiteGroupScheduling, order_for_workers
from tests.suite_support import DatabaseFactory

# LightGBM's OpenMP threads spin while they wait for each other. With the suite's
# processes (two pytest workers, their stacks' services) sharing two cores, a spinning
# thread holds the core its partner needs: 1,500 rounds on 4,000 rows took 70 s with
# two spinning threads, 8.6 s with two waiting ones and 4.4 s with one (load ~7). Every
# process a test starts inherits these (devstack.processes.inherited_environment);
# set either variable yourself to try another value.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MODELYARD_TRAINER_NUM_THREADS", "1")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(
    config: pytest.Config, log: Producer
) -> SuiteGroupScheduling | None:
    """`--dist loadgroup` (as `make test` runs): tests/parallel_groups.py."""
    if config.getoption("dist") != "loadgroup":
        return None
    return SuiteGroupScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ:
        order_for_workers(items)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modelyard")


@pytest.fixture(scope="session")
def nats_server(session_dir: Path) -> Iterator[NatsServer]:
    server = start_nats(session_dir / "nats-session")
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def mlflow_server(session_dir: Path) -> Iterator[MlflowServer]:
    server = start_mlflow(session_dir / "mlflow-session")
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def s3_server(session_dir: Path) -> Iterator[S3Server]:
    server = start_s3(session_dir / "s3-session")
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def database_url_factory(session_dir: Path) -> Iterator[DatabaseFactory]:
    """`factory(prefix)` returns the URL of a new, empty database."""
    created: list[str] = []
    counter = iter(range(1_000_000))

    def factory(prefix: str) -> str:
        if postgres_available():
            url = create_postgres_database(prefix)
            created.append(url)
            return url
        return f"sqlite:///{session_dir / f'{prefix}-{next(counter)}.db'}"

    yield factory
    for url in created:
        drop_postgres_database(url)
