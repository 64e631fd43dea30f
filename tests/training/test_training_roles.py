"""MODELYARD_TRAINER_ROLE: a `serving` Trainer scores and consumes no job, a `training`
Trainer trains and refuses model reads; real NATS and MLflow."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from devstack.components import MlflowServer, NatsServer
from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from runtime.errors import error_reason
from tests.training.training_support import (
    SERVICE_TOKEN,
    Bus,
    DatasetServer,
    TrainerProcess,
    final_event,
    sklearn_csv,
    start_trainer,
)

pytestmark = pytest.mark.slow

METADATA = (("authorization", f"Bearer {SERVICE_TOKEN}"),)


@pytest.fixture(scope="module")
def serving(
    tmp_path_factory: pytest.TempPathFactory,
    nats_server: NatsServer,
    mlflow_server: MlflowServer,
    dataset_server: DatasetServer,
) -> Iterator[TrainerProcess]:
    work_dir = tmp_path_factory.mktemp("serving")
    process = start_trainer(
        work_dir,
        nats_server,
        mlflow_server,
        dataset_server.address,
        name="trainer-serving",
        MODELYARD_TRAINER_ROLE="serving",
        MODELYARD_TRAINER_WORKER_SLOTS="2",  # ignored: a serving Trainer takes no job
    )
    yield process
    process.stop()


async def test_serving_trainer_takes_no_job_and_scores_what_a_training_one_trained(
    serving: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    tmp_path: Path,
    nats_server: NatsServer,
    mlflow_server: MlflowServer,
) -> None:
    dataset_id = dataset_server.service.add_csv(sklearn_csv(data_dir, "iris"), "iris-roles")
    job_id = await bus.submit(dataset_id, "target", model_name="roles-iris")
    await asyncio.sleep(4)
    assert await bus.events(job_id) == []  # nobody took it

    training = await asyncio.to_thread(
        start_trainer,
        tmp_path,
        nats_server,
        mlflow_server,
        dataset_server.address,
        name="trainer-training",
        MODELYARD_TRAINER_ROLE="training",
    )
    try:
        succeeded = final_event(await bus.wait_final(job_id)).succeeded
        assert succeeded.mlflow.registered_model_version >= 1
        row = struct_pb2.Struct()
        row.update(
            {
                "sepal length (cm)": 5.1,
                "sepal width (cm)": 3.5,
                "petal length (cm)": 1.4,
                "petal width (cm)": 0.2,
            }
        )
        request = trainer_service_pb2.PredictRequest(model_name="roles-iris", rows=[row])
        async with grpc.aio.insecure_channel(serving.address) as channel:
            stub: Any = trainer_service_pb2_grpc.TrainerServiceStub(channel)
            answer = await stub.Predict(request, metadata=METADATA, timeout=60)
            assert len(answer.predictions) == 1
        async with grpc.aio.insecure_channel(training.address) as channel:
            stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
            for call, message in (
                (stub.Predict, request),
                (stub.GetModel, trainer_service_pb2.GetModelRequest(model_name="roles-iris")),
                (stub.ListModels, trainer_service_pb2.ListModelsRequest()),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(message, metadata=METADATA, timeout=30)
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert error_reason(refused.value) == "TRAINER_NOT_SERVING"
            checked = await stub.ValidateTrainingParams(
                trainer_service_pb2.ValidateTrainingParamsRequest(params={"num_leaves": "7"}),
                metadata=METADATA,
                timeout=30,
            )
            assert dict(checked.params) == {"num_leaves": "7"}
    finally:
        await asyncio.to_thread(training.stop)
    assert "model trained" not in serving.logs()
