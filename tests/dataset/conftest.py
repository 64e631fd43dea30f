"""Fixtures of the Dataset service tests: the service in-process or as a real process,
and a small client that speaks its gRPC API the way other services do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from devstack.components import S3Server
from tests.dataset.dataset_support import (
    RunningService,
    start_in_process,
    stop_in_process,
)


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(scope="module", params=["local+sqlite", "s3+postgresql"])
async def service(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: S3Server,
    database_url_factory: Callable[[str], str],
) -> AsyncIterator[RunningService]:
    """The service in this process: local files + SQLite, then S3 + PostgreSQL."""
    tmp = tmp_path_factory.mktemp("dataset")
    if request.param == "local+sqlite":
        running = await start_in_process(tmp, None, database_url=f"sqlite:///{tmp / 'd.db'}")
    else:
        # The factory runs its own event loop (asyncio.run): not on this one.
        url = await asyncio.to_thread(database_url_factory, "modelyard_dataset_test")
        running = await start_in_process(tmp, s3_server, database_url=url)
    yield running
    await stop_in_process(running)
