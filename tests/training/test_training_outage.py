"""An MLflow outage seen by a real Trainer process: retries spread out (each waits 4 times
longer than the one before), the attempt budget is what it was, and the error the user
reads names no internal address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.components import MlflowServer, NatsServer
from devstack.processes import free_port
from tests.training.training_support import (
    Bus,
    DatasetServer,
    TrainerProcess,
    final_event,
    reason_of,
    sklearn_csv,
    start_trainer,
)

pytestmark = pytest.mark.slow

RETRY_DELAY_SECONDS = 2


@pytest.fixture(scope="module")
def dead_mlflow_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def trainer_without_mlflow(
    tmp_path_factory: pytest.TempPathFactory,
    nats_server: NatsServer,
    mlflow_server: MlflowServer,
    dataset_server: DatasetServer,
    dead_mlflow_url: str,
) -> Iterator[TrainerProcess]:
    process = start_trainer(
        tmp_path_factory.mktemp("trainer-outage"),
        nats_server,
        mlflow_server,
        dataset_server.address,
        name="trainer-outage",
        MODELYARD_TRAINER_MLFLOW_TRACKING_URI=dead_mlflow_url,
        MODELYARD_TRAINER_MAX_ATTEMPTS="3",
        MODELYARD_TRAINER_RETRY_DELAY_SECONDS=str(RETRY_DELAY_SECONDS),
    )
    yield process
    process.stop()


async def test_an_mlflow_outage_spreads_the_attempts_and_hides_its_address(
    trainer_without_mlflow: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    dead_mlflow_url: str,
) -> None:
    dataset_id = dataset_server.service.add_csv(sklearn_csv(data_dir, "iris"), "iris")
    job_id = await bus.submit(dataset_id, "target")
    events = await bus.wait_final(job_id, within=240)
    final = final_event(events)
    assert final.WhichOneof("kind") == "failed"
    assert (reason_of(final), final.attempt) == ("MLFLOW_UNAVAILABLE", 3)
    assert "://" not in final.failed.error.message
    assert dead_mlflow_url.removeprefix("http://") not in final.failed.error.message
    starts = {
        event.attempt: event.event_time.ToDatetime()
        for event in events
        if event.WhichOneof("kind") == "started"
    }
    assert sorted(starts) == [1, 2, 3]
    first_gap = (starts[2] - starts[1]).total_seconds()
    second_gap = (starts[3] - starts[2]).total_seconds()
    # Each attempt fails the same way; only the wait after it grows (2 s, then 8 s).
    assert second_gap - first_gap >= 3 * RETRY_DELAY_SECONDS - 2, (first_gap, second_gap)
